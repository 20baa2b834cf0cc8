"""kfp_serve.serving.runtime._kserve: kserve's model API without the rest of the SDK, same
classes."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_runtime_import_skips_the_sdk_and_the_rest_loads_on_first_use():
    out = _run(
        "import sys\n"
        "sys.argv = ['x', '--http_port', 'not-a-number']\n"
        "from kfp_serve.serving.runtime._kserve import kserve\n"
        "import kserve.model\n"
        "print('kserve.model_server' in sys.modules, 'kserve.api.kserve_client' in sys.modules)\n"
        "assert kserve.Model is kserve.model.Model\n"
        "import kserve as again\n"
        "assert again is kserve\n"
        "from kserve import ModelServer, V1beta1PredictorSpec\n"
        "print(ModelServer.__module__, V1beta1PredictorSpec.__name__)\n"
        "print(getattr(kserve, 'NoSuchThing', None))\n"
    )
    assert out.splitlines() == [
        "False False",
        "kserve.model_server V1beta1PredictorSpec",
        "None",
    ]


def test_runtime_import_after_a_full_kserve_import_uses_it():
    out = _run(
        "import kserve\n"
        "from kfp_serve.serving.runtime._kserve import kserve as k, InvalidInput\n"
        "print(k is kserve, k.ModelServer.__name__)\n"
    )
    assert out == "True ModelServer"


def test_manifest_processes_get_crd_classes_without_the_sdk_and_runtimes_still_import():
    out = _run(
        "import sys\n"
        "from kfp_serve.serving.runtime.kserve_package import lazy_kserve\n"
        "k = lazy_kserve()\n"
        "spec = k.V1beta1PredictorSpec\n"
        "print(spec.__name__, 'kserve.model' in sys.modules,"
        " 'kserve.model_server' in sys.modules)\n"
        "from kfp_serve.serving.runtime._kserve import kserve\n"
        "import kserve.models.v1beta1_predictor_spec as m\n"
        "print(kserve is k, spec is m.V1beta1PredictorSpec, kserve.Model.__module__)\n"
    )
    assert out.splitlines() == [
        "V1beta1PredictorSpec False False",
        "True True kserve.model",
    ]


def test_serve_config_types_resolve_whether_or_not_the_whole_sdk_was_imported():
    """The complete ``kserve`` package re-exports only some generated classes: a ServeConfig
    with a logger storage spec must build after a full ``import kserve`` too (the full suite
    once failed this way when a data-plane test had imported the SDK first)."""
    lookup = (
        "from kfp_serve.serving.schema import model_class\n"
        "print(model_class('V1beta1LoggerStorageSpec').__name__, "
        "'kserve.model_server' in sys.modules)\n"
    )
    assert _run("import sys\n" + lookup) == "V1beta1LoggerStorageSpec False"
    assert _run("import sys, kserve\n" + lookup) == "V1beta1LoggerStorageSpec True"
