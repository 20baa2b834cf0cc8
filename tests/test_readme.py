"""The README's commands and quick start work as written."""

import json
import re
from pathlib import Path

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
