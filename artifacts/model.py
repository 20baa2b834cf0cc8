"""Model and Transformer artifacts: detect the framework, save the KServe layout, submit.

``Model(model=estimator, name="iris", version="1.0.0").submit_artifact()`` saves the model
directory under ``$KFP_SERVE_HOME/artifacts/model/iris/1.0.0/`` (atomically: a temp directory
renamed into place) and records it in MLMD with its lineage; it returns the MLMD id.

``version`` defaults to ``"1.0.0"``: a first submission needs no ceremony, and submitting the
same name again without a new version is refused rather than silently replacing a release.
"""

from __future__ import annotations

import getpass
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kfp_serve.artifacts import layout
from kfp_serve.artifacts.errors import ArtifactError, VersionConflictError
from kfp_serve.artifacts.names import validate_name, validate_version
from kfp_serve.locks import exclusive

DEFAULT_VERSION = "1.0.0"
SUPPORTED = (
    "scikit-learn estimators and Pipelines (any sklearn.* estimator with predict()), "
    "XGBoost's scikit-learn wrappers (XGBClassifier, XGBRegressor, XGBRanker, …) and "
    "xgboost.Booster"
)


def _modules(obj: Any) -> list[str]:
    return [c.__module__ for c in type(obj).__mro__]


def detect_framework(model: Any) -> str:
    """Return "xgboost" or "sklearn" for a supported model.

    Decided from the class hierarchy's modules, so neither library is imported for a model of
    the other. XGBoost is checked first: its wrappers subclass sklearn's BaseEstimator.

    Raises:
        ArtifactError: unsupported object, naming its type and what is supported.
    """
    mods = _modules(model)
    if any(m == "xgboost" or m.startswith("xgboost.") for m in mods):
        return "xgboost"
    if any(m.startswith("sklearn.") for m in mods):
        return "sklearn"
    t = type(model)
    raise ArtifactError(
        f"unsupported model type {t.__module__}.{t.__qualname__} ({model!r:.80}); kfp-serve "
        f"supports {SUPPORTED}. Fit one of those, or wrap your preprocessing in a sklearn Pipeline"
    )


def _framework_version(framework: str) -> str:
    if framework == "xgboost":
        import xgboost

        return xgboost.__version__
    import sklearn

    return sklearn.__version__


def _plain(values: Any) -> list | None:
    """numpy arrays/scalars to JSON/YAML-safe Python values."""
    if values is None:
        return None
    out = []
    for v in list(values):
        v = v.item() if hasattr(v, "item") else v
        out.append(v if isinstance(v, str | int | float | bool) else str(v))
    return out


def _check_fitted(model: Any, what: str) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError as e:
        raise ArtifactError(
            f"{what} {type(model).__name__} is not fitted; call .fit() first"
        ) from e
    except TypeError as e:  # not an estimator at all
        raise ArtifactError(f"{what} {model!r:.80} is not a scikit-learn estimator: {e}") from e


def _dtype(example: Any) -> str:
    if example is None:
        return "float64"
    import numpy as np

    if hasattr(example, "dtypes"):  # DataFrame: one dtype if uniform, else "mixed"
        kinds = {str(d) for d in example.dtypes}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    return str(np.asarray(example).dtype)


def _check_main(model: Any, what: str) -> None:
    # A class defined in a notebook/script's __main__ pickles by reference to __main__, which
    # the model server cannot import: fail now rather than at serving time.
    if type(model).__module__ == "__main__":
        raise ArtifactError(
            f"{what} class {type(model).__qualname__!r} is defined in __main__ (a notebook or "
            "script), so a model server cannot unpickle it; move it into an importable module"
        )


def sklearn_signature(model: Any, example: Any = None) -> dict[str, Any]:
    """Signature of a fitted scikit-learn estimator or Pipeline."""
    from sklearn.base import is_classifier

    if not hasattr(model, "predict"):
        raise ArtifactError(
            f"{type(model).__name__} has no predict(); a preprocessing step belongs in "
            "artifacts.Transformer(...), or in a Pipeline that ends with an estimator"
        )
    _check_fitted(model, "model")
    n = getattr(model, "n_features_in_", None)
    names = getattr(model, "feature_names_in_", None)
    classifier = is_classifier(model)
    try:
        from sklearn.base import is_clusterer  # scikit-learn >= 1.6

        clusterer = is_clusterer(model)
    except ImportError:
        clusterer = getattr(model, "_estimator_type", None) == "clusterer"
    return {
        "n_features": int(n) if n is not None else None,
        "dtype": _dtype(example),
        "feature_names": _plain(names),
        "output": "label" if classifier or clusterer else "value",
        "classes": _plain(getattr(model, "classes_", None)) if classifier else None,
        "proba": bool(classifier and hasattr(model, "predict_proba")),
    }


def xgboost_signature(model: Any, example: Any = None) -> dict[str, Any]:
    """Signature of a fitted XGBoost sklearn wrapper or Booster."""
    import json

    import xgboost

    if isinstance(model, xgboost.Booster):
        booster = model
        classes = None
        output = "value"  # a raw Booster predicts scores/probabilities, never labels
    else:
        try:
            booster = model.get_booster()
        except Exception as e:  # xgboost raises NotFittedError (a sklearn error) or XGBoostError
            raise ArtifactError(
                f"model {type(model).__name__} is not fitted; call .fit() first"
            ) from e
        classes = _plain(getattr(model, "classes_", None))
        output = "label" if classes is not None else "value"
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    proba = objective.startswith(("binary:logistic", "multi:softprob", "multi:softmax"))
    if isinstance(model, xgboost.Booster) and objective.startswith("multi:softmax"):
        output = "label"
    names = booster.feature_names
    return {
        "n_features": int(booster.num_features()),
        "dtype": _dtype(example),
        "feature_names": list(names) if names else None,
        "output": output,
        "classes": classes,
        "proba": bool(proba and objective != "multi:softmax"),
        "objective": objective,
    }


def transformer_signature(transformer: Any, example: Any = None) -> dict[str, Any]:
    """Signature of a fitted transformer: input features in, features out."""
    if not hasattr(transformer, "transform"):
        raise ArtifactError(
            f"{type(transformer).__name__} has no transform(); a Transformer must be a fitted "
            "object with .transform(X), such as a sklearn scaler or Pipeline of transformers"
        )
    if any(m.startswith("sklearn.") for m in _modules(transformer)):
        _check_fitted(transformer, "transformer")
    n_in = getattr(transformer, "n_features_in_", None)
    names = getattr(transformer, "feature_names_in_", None)
    n_out = None
    try:
        n_out = len(transformer.get_feature_names_out())
    except Exception:  # not every transformer implements it; fall back to a probe row
        if n_in is not None:
            try:
                import numpy as np

                n_out = int(np.asarray(transformer.transform(np.zeros((1, n_in)))).shape[-1])
            except Exception:
                n_out = None
    return {
        "n_features": int(n_in) if n_in is not None else None,
        "n_features_out": n_out,
        "dtype": _dtype(example),
        "feature_names": _plain(names),
        "output": "value",
        "classes": None,
        "proba": False,
    }


def artifacts_root() -> Path:
    """``$KFP_SERVE_HOME/artifacts``: where submitted artifact directories live."""
    from kfp_serve.artifacts.home import state_dir

    return state_dir() / "artifacts"


def _dir_lock(root: Path):  # noqa: ANN202 - a filelock lock object, used with ``with``
    """The lock that serializes writes of artifact directories under ``root``."""
    return exclusive(root / ".lock")


def _default_author() -> str:
    author = os.environ.get("KFP_SERVE_AUTHOR")
    if author:
        return author
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "unknown"


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ArtifactError(f"tags must map str to str; got {k!r}: {v!r}")
    return tags


def saved_metadata(directory: Path, kind: str) -> dict[str, Any] | None:
    """The metadata file of a directory saved for ``kind`` (by ``save`` or a train step), or None.

    A directory that already describes what it holds (framework, framework version, signature)
    can be submitted without unpickling it: the signature was computed from the fitted object
    when the file was written, and loading a scikit-learn model only to compute it again costs
    about a second of imports. Only a file of the right kind with a model file that fits its
    framework counts; anything else (no file, another kind, unreadable) returns None, and the
    caller loads the object as before.
    """
    if not (directory / layout.METADATA_FILE).is_file():
        return None
    try:
        metadata = layout.read_metadata(directory)
        if metadata["kind"] != kind:
            return None
        if kind == "model":
            layout.model_file(directory, metadata["framework"])
        elif not (directory / layout.TRANSFORMER_JOBLIB).is_file():
            return None
    except ArtifactError:
        return None
    return metadata


class _Artifact:
    """Shared save/submit logic of Model and Transformer."""

    kind = "model"

    def __init__(
        self,
        name: str,
        version: str,
        description: str,
        author: str | None,
        tags: Mapping[str, str] | None,
    ) -> None:
        self.name = validate_name(name, f"{self.kind} name")
        self.version = validate_version(version, f"{self.kind} version")
        self.description = str(description or "")
        self.author = author if author is not None else _default_author()
        self.tags = _check_tags(tags)
        self.framework = "sklearn"
        self.framework_version = ""
        self.signature: dict[str, Any] = {}
        self.artifact_id: int | None = None

    def metadata(self) -> dict[str, Any]:
        """The content of ``kfp-serve-metadata.yaml`` (deterministic: no timestamps)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "framework_version": self.framework_version,
            "signature": self.signature,
        }

    def _write_files(self, directory: Path) -> None:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact directory (KServe layout + metadata) to a new/empty ``directory``."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise ArtifactError(f"cannot save into {str(directory)!r}: it is not empty")
        directory.mkdir(parents=True, exist_ok=True)
        self._write_files(directory)
        layout.write_metadata(directory, self.metadata())
        return directory

    def submit_artifact(
        self,
        allow_overwrite: bool = False,
        *,
        allow_existing: bool = False,
        inputs: Sequence[int] = (),
        run: str | None = None,
        experiment: str | None = None,
        store: Any = None,
    ) -> int:
        """Save under ``$KFP_SERVE_HOME/artifacts/<kind>/<name>/<version>/`` and record in MLMD.

        Args:
            allow_overwrite: Replace an existing name+version: the same MLMD id gets the new
                content and properties, and its snapshot link is cleared (lineage keeps the
                earlier submission and snapshots). Without it, a duplicate is an error.
            allow_existing: If name+version exists with identical content (same tree digest),
                return its id instead of failing (idempotent re-runs). Different content under
                the same version is still an error.
            inputs: MLMD ids of artifacts this one was made from (INPUT events; for example
                the dataset or the transformer it was trained behind).
            run: The pipeline run to record under (default: from the environment, see
                ``kfp_serve.artifacts.metadata.current_run``).
            experiment: The experiment to record under (default: from the environment).
            store: A ``kfp_serve.artifacts.MetadataStore`` (default: ``metadata_store()``).

        Returns:
            The MLMD artifact id.

        Raises:
            VersionConflictError: the version exists with different content and neither
                ``allow_overwrite`` nor identical content lets it through.
            MetadataError: the version exists and ``allow_overwrite`` is False, or MLMD fails.
        """
        from kfp_serve.artifacts.metadata import RunInfo, current_run
        from kfp_serve.artifacts.records import Submission, record_submission
        from kfp_serve.artifacts.snapshots.digest import tree_digest

        run_info = current_run()
        if run or experiment:
            run_info = RunInfo(
                experiment or run_info.experiment,
                run or run_info.run_id,
                "kfp" if run else run_info.source,
            )

        root = artifacts_root()
        final = root / self.kind / self.name / self.version
        tmp_root = root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        # Serialising the model is the slow part: do it before taking any lock.
        tmp = tmp_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            self.save(tmp)

            def place(replacing: bool) -> str:
                # Runs under the MLMD write lock, after the duplicate check: a directory at
                # ``final`` without a record (a crash after the rename) is simply replaced.
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    trash = tmp_root / f"old-{uuid.uuid4().hex}"
                    os.rename(final, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                os.rename(tmp, final)
                return str(final)

            sub = Submission(
                kind=self.kind,
                name=self.name,
                version=self.version,
                properties={
                    "author": self.author,
                    "description": self.description,
                    "tags": self.tags,
                    "framework": self.framework,
                    "framework_version": self.framework_version,
                    "signature": self.signature,
                },
                inputs=tuple(inputs),
            )

            def on_existing(record: Any) -> int | None:
                if not allow_existing:
                    return None
                new_digest, _ = tree_digest(tmp)
                old_dir = Path(record.uri)
                old_digest = tree_digest(old_dir)[0] if old_dir.is_dir() else record.digest
                if old_digest in (None, new_digest):
                    return record.id
                raise VersionConflictError(
                    f"{self.kind} {self.name!r} version {self.version!r} already exists (id "
                    f"{record.id}) with different content; use a new version, or "
                    "allow_overwrite=True to replace it"
                )

            with _dir_lock(root):
                self.artifact_id = record_submission(
                    sub,
                    place,
                    allow_overwrite=allow_overwrite,
                    on_existing=on_existing,
                    run=run_info,
                    store=store,
                )
            return self.artifact_id
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, "
            f"framework={self.framework!r})"
        )


def load_model_file(directory: Path) -> Any:
    """Load the model file of a model directory (``model.joblib``, ``model.json``/``.ubj``).

    Raises:
        ArtifactError: No model file, or it cannot be loaded.
    """
    path = directory / layout.MODEL_JOBLIB
    try:
        if path.is_file():
            import joblib

            return joblib.load(path)
        for name in (layout.XGBOOST_JSON, layout.XGBOOST_UBJ):
            path = directory / name
            if path.is_file():
                from xgboost import XGBClassifier

                model = XGBClassifier()
                model.load_model(str(path))
                return model
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling can raise anything
        raise ArtifactError(f"cannot load {str(path)!r}: {type(e).__name__}: {e}") from e
    raise ArtifactError(
        f"{str(directory)!r} holds no model file ({layout.MODEL_JOBLIB}, {layout.XGBOOST_JSON} "
        f"or {layout.XGBOOST_UBJ}); connect the model output of a train step"
    )


class Model(_Artifact):
    """A fitted scikit-learn or XGBoost model, ready to submit to MLMD.

    Args:
        model: A fitted sklearn estimator/Pipeline, XGBoost sklearn wrapper or xgboost.Booster.
        name: DNS-1123 name (lower-case letters, digits, '-'), e.g. "iris".
        version: Version string, default "1.0.0".
        description: Free text.
        author: Default ``$KFP_SERVE_AUTHOR``, else the login name.
        tags: String labels, e.g. {"stage": "dev"}.
        input_example: Optional sample input (array or DataFrame): records its dtype and
            checks that the model predicts on it.

    Raises:
        ArtifactError: unsupported or unfitted model. InvalidNameError: bad name/version.
    """

    kind = "model"

    def __init__(
        self,
        model: Any,
        name: str,
        version: str = DEFAULT_VERSION,
        description: str = "",
        author: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        input_example: Any = None,
    ) -> None:
        super().__init__(name, version, description, author, tags)
        self.model = model
        self.framework = detect_framework(model)
        _check_main(model, "model")
        if self.framework == "xgboost":
            self.signature = xgboost_signature(model, input_example)
        else:
            self.signature = sklearn_signature(model, input_example)
        self.framework_version = _framework_version(self.framework)
        if input_example is not None:
            self._check_example(input_example)

    @classmethod
    def from_dir(
        cls,
        model_dir: str | os.PathLike[str],
        name: str,
        version: str = DEFAULT_VERSION,
        description: str = "",
        author: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Model:
        """A model from a directory in the serving layout (e.g. a train step's output).

        When the directory has a ``kfp-serve-metadata.yaml`` of kind "model" (written by
        ``save`` or by ``kfp_serve.artifacts.training.train_model``), its framework and signature
        are
        used and the model file is copied as it is, without loading it. Otherwise the model
        file (``model.joblib``, ``model.json`` or ``model.ubj``) is loaded and inspected like
        a fitted estimator passed to ``Model(...)``.

        Raises:
            ArtifactError: The directory holds no loadable model file.
        """
        directory = Path(model_dir)
        metadata = saved_metadata(directory, "model")
        if metadata is None:
            return cls(load_model_file(directory), name, version, description, author, tags)
        self = cls.__new__(cls)
        _Artifact.__init__(self, name, version, description, author, tags)
        self.model = None
        self.framework = str(metadata["framework"])
        self.framework_version = str(metadata["framework_version"])
        self.signature = dict(metadata["signature"])
        self._model_file = layout.model_file(directory, self.framework)
        return self

    def _check_example(self, example: Any) -> None:
        try:
            if self.framework == "xgboost" and type(self.model).__name__ == "Booster":
                import xgboost

                self.model.predict(xgboost.DMatrix(example))
            else:
                self.model.predict(example)
        except Exception as e:
            raise ArtifactError(
                f"model {self.name!r} cannot predict on input_example: {type(e).__name__}: {e}"
            ) from e

    def _write_files(self, directory: Path) -> None:
        if self.model is None:  # from_dir without loading: the saved file is the model
            shutil.copy2(self._model_file, directory / self._model_file.name)
            return
        if self.framework == "xgboost":
            # Native JSON format: what xgbserver loads, and portable across xgboost versions.
            self.model.save_model(str(directory / layout.XGBOOST_JSON))
        else:
            import joblib

            joblib.dump(self.model, directory / layout.MODEL_JOBLIB)


class Transformer(_Artifact):
    """Preprocessing fitted at training time, served as a KServe transformer.

    Give exactly one of ``transformer`` (a fitted object with ``.transform(X)``, e.g. a sklearn
    scaler or Pipeline) or ``transformer_dir`` (a directory holding ``transformer.joblib``;
    other files in it are kept, a stale metadata file is rewritten).

    Raises:
        ArtifactError: neither/both given, not fitted, no transform(), or a bad directory.
    """

    kind = "transformer"

    def __init__(
        self,
        name: str,
        transformer: Any = None,
        transformer_dir: str | os.PathLike[str] | None = None,
        version: str = DEFAULT_VERSION,
        description: str = "",
        author: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        input_example: Any = None,
    ) -> None:
        super().__init__(name, version, description, author, tags)
        if (transformer is None) == (transformer_dir is None):
            raise ArtifactError(
                f"Transformer {name!r}: give exactly one of transformer=<fitted object> or "
                "transformer_dir=<directory with transformer.joblib>"
            )
        self.transformer_dir = Path(transformer_dir) if transformer_dir is not None else None
        if self.transformer_dir is not None:
            metadata = saved_metadata(self.transformer_dir, self.kind)
            if metadata is not None and input_example is None:
                # Saved with its signature (by save() or a train step): no need to unpickle.
                self.transformer = None
                self.signature = dict(metadata["signature"])
                self.framework = str(metadata["framework"])
                self.framework_version = str(metadata["framework_version"])
                return
            transformer = self._load_dir(self.transformer_dir)
        self.transformer = transformer
        detect = _modules(transformer)
        if not any(m.startswith("sklearn.") for m in detect):
            # Any object with transform() is accepted, but it must be picklable by reference.
            _check_main(transformer, "transformer")
        self.signature = transformer_signature(transformer, input_example)
        self.framework = "sklearn"
        self.framework_version = _framework_version("sklearn")

    @staticmethod
    def _load_dir(directory: Path) -> Any:
        path = directory / layout.TRANSFORMER_JOBLIB
        if not directory.is_dir():
            raise ArtifactError(f"transformer_dir {str(directory)!r} is not a directory")
        if not path.is_file():
            found = sorted(p.name for p in directory.iterdir())
            raise ArtifactError(
                f"transformer_dir {str(directory)!r} has no {layout.TRANSFORMER_JOBLIB!r} "
                f"(found {found}); save the fitted object with "
                f"joblib.dump(obj, '{layout.TRANSFORMER_JOBLIB}')"
            )
        import joblib

        try:
            obj = joblib.load(path)
        except Exception as e:
            raise ArtifactError(f"cannot load {str(path)!r}: {type(e).__name__}: {e}") from e
        if not hasattr(obj, "transform"):
            raise ArtifactError(
                f"{str(path)!r} holds a {type(obj).__name__}, which has no transform()"
            )
        return obj

    def _write_files(self, directory: Path) -> None:
        if self.transformer_dir is not None:
            for item in self.transformer_dir.iterdir():
                if item.name == layout.METADATA_FILE:
                    continue
                if item.is_dir():
                    shutil.copytree(item, directory / item.name, symlinks=True)
                else:
                    shutil.copy2(item, directory / item.name, follow_symlinks=False)
            return
        import joblib

        joblib.dump(self.transformer, directory / layout.TRANSFORMER_JOBLIB)
