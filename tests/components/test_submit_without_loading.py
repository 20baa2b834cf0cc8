"""A train step's directories describe themselves: submit steps record them without loading."""

import json
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from kfp_serve.artifacts import layout
from kfp_serve.artifacts.model import Model, Transformer
from kfp_serve.artifacts.training import UNSUBMITTED_VERSION, train_model

REPO = Path(__file__).resolve().parents[2]
IRIS_FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture
def trained(tmp_path):
    train_model(
        model_dir=tmp_path / "model", transformer_dir=tmp_path / "transformer",
        samples_path=tmp_path / "samples.json",
    )
    return tmp_path


def test_train_writes_metadata_computed_from_the_saved_files(trained):
    model_meta = layout.read_metadata(trained / "model")
    assert model_meta["version"] == UNSUBMITTED_VERSION
    loaded = Model(joblib.load(trained / "model" / layout.MODEL_JOBLIB), "m")
    # The model was fitted on an array: the column names come from the data, not the model.
    assert model_meta["signature"] == {**loaded.signature, "feature_names": IRIS_FEATURES}
    assert model_meta["framework_version"] == loaded.framework_version
    t_meta = layout.read_metadata(trained / "transformer")
    assert t_meta["kind"] == "transformer"
    assert t_meta["signature"]["n_features"] == t_meta["signature"]["n_features_out"] == 4
    assert t_meta["signature"]["feature_names"] == IRIS_FEATURES


def test_from_dir_uses_the_metadata_and_copies_the_model_file(trained, tmp_path):
    model = Model.from_dir(trained / "model", "iris", "2.0.0", author="me")
    assert model.model is None and model.signature["n_features"] == 4
    saved = model.save(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == [layout.METADATA_FILE, layout.MODEL_JOBLIB]
    assert (saved / layout.MODEL_JOBLIB).read_bytes() == (
        trained / "model" / layout.MODEL_JOBLIB
    ).read_bytes()
    meta = layout.read_metadata(saved)
    assert (meta["name"], meta["version"]) == ("iris", "2.0.0")


def test_from_dir_without_metadata_loads_the_model(trained, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / layout.MODEL_JOBLIB).write_bytes((trained / "model" / layout.MODEL_JOBLIB).read_bytes())
    model = Model.from_dir(bare, "iris")
    assert model.model is not None
    # Without the metadata file only what the fitted model itself knows is left.
    assert model.signature == {
        **layout.read_metadata(trained / "model")["signature"], "feature_names": None
    }


def test_metadata_of_another_kind_is_not_trusted(trained):
    # A model's metadata file next to a transformer.joblib: the transformer is loaded instead.
    directory = trained / "transformer"
    meta = layout.read_metadata(trained / "model")
    layout.write_metadata(directory, meta)
    t = Transformer("scaler", transformer_dir=directory)
    assert t.transformer is not None and t.signature["n_features_out"] == 4


def test_submit_steps_import_neither_sklearn_nor_joblib(trained, kfp_home):
    code = (
        "import json, sys\n"
        "from kfp_serve.components.ops import submit\n"
        f"m = submit('model', {str(trained / 'model')!r}, {str(trained / 'sm')!r}, name='iris',"
        " version='1.0.0')\n"
        f"t = submit('transformer', {str(trained / 'transformer')!r}, {str(trained / 'st')!r},"
        " name='scaler', version='1.0.0')\n"
        "print(json.dumps([m, t, sorted(k for k in ('sklearn', 'joblib', 'xgboost')"
        " if k in sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    model_id, transformer_id, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert model_id > 0 and transformer_id > 0
    assert (trained / "sm" / layout.MODEL_JOBLIB).is_file()
    assert (trained / "st" / layout.TRANSFORMER_JOBLIB).is_file()


def test_new_version_reuses_identical_content_and_bumps_different(trained, tmp_path, kfp_home):
    from kfp_serve import artifacts
    from kfp_serve.components.ops import submit

    other = tmp_path / "other"
    train_model(model_dir=other / "model", transformer_dir=other / "transformer",
                samples_path=other / "samples.json", dataset_name="wine")

    def record(directory: Path, out: str, **kwargs) -> int:
        return submit("transformer", directory / "transformer", tmp_path / out,
                      name="nv-scaler", version="1.0.0", **kwargs)

    first = record(trained, "a", new_version=True)  # nothing recorded: the given version
    assert record(trained, "b", new_version=True) == first
    with pytest.raises(artifacts.VersionConflictError, match="different content"):
        record(other, "c")
    bumped = record(other, "d", new_version=True)
    assert record(other, "e", new_version=True) == bumped  # identical to the latest: reused
    versions = {r.version: r.id for r in artifacts.list_artifacts(kind="transformer")
                if r.name == "nv-scaler"}
    assert versions == {"1.0.0": first, "1.0.1": bumped}
