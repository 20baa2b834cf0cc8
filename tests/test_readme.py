"""The README's commands and quick start work as written."""

import json
import re
from pathlib import Path

import pytest

from kfp_serve.serving.backends.local import LocalBackend
from tests.kserve_schema import reference_available, validate_strict

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_fresh_machine_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_python_quick_start_runs_and_serves(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path))
    code = re.search(r"## Quick start \(Python\)\n\n```python\n(.*?)```", README.read_text(),
                     re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    try:
        exec(compile(code, str(README), "exec"), {})
        printed = capsys.readouterr().out
        assert re.search(r"'predictions': \[0\]", printed), printed
    finally:
        LocalBackend(progress=False).delete("iris")


def test_manifest_snippet_prints_a_valid_manifest(capsys):
    code = re.search(r"no MLMD, no backend\):\n\n```python\n(.*?)```", README.read_text(),
                     re.S).group(1)
    assert len(code.strip().splitlines()) <= 7
    exec(compile(code, str(README), "exec"), {})
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["kind"] == "InferenceService"
    assert set(manifest["spec"]) == {"predictor", "transformer"}
    if reference_available():
        assert validate_strict(manifest) == []


def test_alias_snippet_runs(tmp_path, monkeypatch):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path))
    monkeypatch.delenv("KFP_SERVE_MLMD", raising=False)
    clf = LogisticRegression(max_iter=300).fit(*load_iris(return_X_y=True))
    for version in ("0.9.0", "1.0.0"):
        artifacts.Model(model=clf, name="iris", version=version).submit_artifact()
    code = re.search(r"## Model versions, aliases and canaries\n.*?```python\n(.*?)```",
                     README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    labels = scope["manifest"]["metadata"]["labels"]
    assert labels["kfp-serve.kubeflow.org/model-alias"] == "champion"
    assert artifacts.resolve("iris").version == "1.0.0"
    with pytest.raises(artifacts.UnservableVersionError, match="archived"):
        artifacts.resolve("iris:0.9.0")
