"""The palette entry point runs the same functions as the KFP components."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_serve.components.entry import format_value, parse_value

REPO = Path(__file__).resolve().parents[2]


def entry(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kfp_serve.components.entry", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def test_train_then_submit_through_the_entry_point(tmp_path, kfp_home):
    import os

    out = tmp_path / "out"
    done = entry(
        "train", "--dataset_name", "iris", "--n_samples", "4", "--test_size", "0.3",
        "--output-model", str(out / "model"), "--output-transformer", str(out / "transformer"),
        "--output-samples", str(out / "samples"), "--output-metrics", str(out / "metrics"),
        "--output-confusion_matrix", str(out / "cm"),
        "--output-has_transformer", str(out / "has_transformer"),
        "--output-accuracy", str(out / "accuracy"), env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert (out / "has_transformer").read_text() == "true"
    assert 0.5 < float((out / "accuracy").read_text()) <= 1.0
    assert json.loads((out / "metrics").read_text())["accuracy"] > 0.5
    assert "confusionMatrix" in json.loads((out / "cm").read_text())
    assert len(json.loads((out / "samples").read_text())["instances"]) == 4

    done = entry(
        "submit_model", "--model", str(out / "model"), "--name", "iris-entry",
        "--output-saved_model", str(out / "saved"), "--output-model_id", str(out / "id"),
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert int((out / "id").read_text()) >= 1
    assert (out / "saved" / "model.joblib").is_file()


def test_missing_required_flag_is_a_usage_error():
    done = entry("snapshot", "--output-uri", "/tmp/x")
    assert done.returncode == 2
    assert "--artifact" in done.stderr


def test_unknown_component_names_the_choices():
    done = entry("deploy")
    assert done.returncode != 0 and "train" in done.stderr


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("3", "Integer", 3), ("0.5", "Float", 0.5), ("True", "Boolean", True),
    ("false", "Boolean", False), ("{}", "String", "{}"), ("[1, 2]", "List[Integer]", [1, 2]),
    ('[{"model": "a"}]', "List", [{"model": "a"}]),
])
def test_parse_value(text, kind, value):
    assert parse_value(text, kind, "x") == value


def test_bad_number_names_the_flag():
    with pytest.raises(SystemExit, match="--n_samples: expected integer"):
        parse_value("ten", "Integer", "n_samples")


def test_a_list_flag_must_be_a_json_array():
    with pytest.raises(SystemExit, match=r"--model_ids: expected a JSON array such as \[1, 2\]"):
        parse_value("1,2", "List[Integer]", "model_ids")


def test_format_value():
    assert [format_value(v) for v in (True, 3, 0.25, "a", {"k": 1})] == [
        "true", "3", "0.25", "a", '{"k": 1}']
