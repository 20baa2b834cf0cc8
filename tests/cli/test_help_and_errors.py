"""``--help`` everywhere, and every user error as one ``error:`` line with its fix, exit != 0."""

from __future__ import annotations

import socket

import pytest

from tests.cli.conftest import REPO, assert_clean_error, run_script

COMMANDS = ["run", "pipelines", "compile", "upload", "serve", "predict", "explain",
            "endpoints", "stop", "logs", "models", "lineage", "demo", "pool"]
README = REPO / "README.md"


def test_top_level_help_lists_every_command():
    outcome = run_script("--help", timeout=30)
    assert outcome.exit_code == 0, outcome.stderr
    listed = {line.split()[1] for line in outcome.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2}
    assert set(COMMANDS) <= listed, outcome.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    outcome = cli(command, "--help")
    assert outcome.exit_code == 0, outcome.stderr
    assert f"Usage: kfp-serve {command}" in outcome.stdout
    # The command's docstring is its description.
    assert len(outcome.stdout.splitlines()) > 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOT_DNS = "is not a valid DNS-1123 name"

# (id, argv, fragments of the error line). The fixes are part of the contract: each message
# says what to do, not only what went wrong.
CASES = [
    ("run-unknown-pipeline", ["run", "nope"], ["unknown pipeline 'nope'", "xgboost",
                                               "kfp-serve pipelines"]),
    ("run-misspelt-pipeline", ["run", "xgbost"], ["did you mean 'xgboost'?"]),
    ("unknown-command", ["modles"], ["unknown command 'modles'", "did you mean 'models'?"]),
    ("run-param-without-equals", ["run", "xgboost", "--param", "oops"],
     ["--param 'oops'", "NAME=VALUE"]),
    ("run-unknown-param", ["run", "xgboost", "--param", "nope=1"],
     ["unknown parameter(s) ['nope']", "this pipeline takes", "endpoint_name="]),
    ("run-misspelt-param", ["run", "xgboost", "-p", "model_vresion=2"],
     ["did you mean 'model_version'?"]),
    ("run-misspelt-serve-config-key", ["run", "xgboost", "-p", 'serve_config={"limit": {}}'],
     ["limit: unknown ServeConfig field", "did you mean 'limits'?"]),
    ("run-bad-model-name", ["run", "xgboost", "-p", "model_name=Bad_Name"],
     ["model_name 'Bad_Name'", NOT_DNS]),
    ("run-bad-version", ["run", "xgboost", "-p", "model_version=1.0/2"],
     ["model_version '1.0/2'", "is not a valid version"]),
    ("run-unknown-snapshot-store", ["run", "xgboost", "-p", "snapshot_store=ftp://x/y"],
     ["no snapshot backend for scheme 'ftp'"]),
    ("run-ill-typed-param", ["run", "xgboost", "-p", "fail_on_mismatch=maybe"],
     ["fail_on_mismatch", "must be boolean"]),
    ("predict-bad-json", ["predict", "iris", "--data", "[[1, 2"],
     ["--data: not valid JSON", "@file.json"]),
    ("predict-missing-file", ["predict", "iris", "--data", "@/nonexistent/rows.json"],
     ["--data: file '/nonexistent/rows.json' not found"]),
    ("explain-bad-json", ["explain", "iris", "--data", "{nope}"], ["--data: not valid JSON"]),
    ("serve-bad-config-json", ["serve", "1", "--config", "{bad"],
     ["--config: not valid JSON"]),
    ("serve-config-unknown-key", ["serve", "1", "--config", '{"bogus": 1}'],
     ["bogus", "unknown ServeConfig field", "known fields are"]),
    ("serve-config-misspelt-nested-key",
     ["serve", "1", "--config", '{"predictor": {"container": {"resourcez": {}}}}'],
     ["predictor.container.resourcez", "did you mean 'resources'?"]),
    ("serve-config-unknown-nested-key",
     ["serve", "1", "--config", '{"predictor": {"container": {"resourcez": {}}}}'],
     ["predictor.container.resourcez"]),
    ("serve-unknown-artifact", ["serve", "987654"], ["no artifact with id 987654"]),
    ("serve-bad-name", ["serve", "1", "--name", "../x"], ["'../x'", NOT_DNS]),
    ("lineage-unknown-artifact", ["lineage", "987654"], ["no artifact with id 987654"]),
    ("predict-unknown-endpoint", ["predict", "no-such-endpoint", "--data", "[[1, 2, 3, 4]]"],
     ["no local endpoint named 'no-such-endpoint'", "kfp-serve endpoints"]),
    ("logs-unknown-endpoint", ["logs", "no-such-endpoint"],
     ["no local endpoint named 'no-such-endpoint'", "KFP_SERVE_HOME=", "kfp-serve endpoints"]),
    ("logs-bad-component", ["logs", "x", "--component", "sidecar"],
     ["--component 'sidecar'", "predictor, transformer or router"]),
    ("stop-neither-name-nor-all", ["stop"], ["NAME or --all"]),
    ("models-unknown-name", ["models", "no-such-model"],
     ["no model or transformer named 'no-such-model'", "kfp-serve models"]),
    ("explain-unknown-endpoint", ["explain", "no-such-endpoint", "--data", "[[1]]"],
     ["no local endpoint named 'no-such-endpoint'"]),
    ("stop-unknown-endpoint", ["stop", "no-such-endpoint"],
     ["no local endpoint named 'no-such-endpoint' to stop", "kfp-serve endpoints",
      "KFP_SERVE_HOME=", "--ignore-missing"]),
    ("predict-path-name", ["predict", "../x", "--data", "[[1]]"], ["'../x'", NOT_DNS]),
    ("predict-shell-name", ["predict", "A;B", "--data", "[[1]]"], ["'A;B'", NOT_DNS]),
    ("stop-path-name", ["stop", "../x"], ["'../x'", NOT_DNS]),
    ("stop-shell-name", ["stop", "A;B"], ["'A;B'", NOT_DNS]),
    ("models-bad-kind", ["models", "--kind", "bogus"], ["'bogus'", "'transformer'",
                                                         "kfp-serve models --help"]),
    ("upload-unknown-pipeline", ["upload", "--host", "http://127.0.0.1:1", "--pipeline", "x"],
     ["unknown pipeline 'x'"]),
]


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_with_the_fix(cli, argv, fragments):
    assert_clean_error(cli(*argv), *fragments)


def test_upload_to_an_unreachable_host_says_how_to_reach_it():
    # The console script: kfp.Client's own warnings would show up on the real stderr.
    host = f"http://127.0.0.1:{_closed_port()}"
    assert_clean_error(run_script("upload", "--host", host, "--pipeline", "xgboost"),
                       f"cannot reach the KFP API at {host}", "check --host")


def test_compile_into_a_file_is_a_clean_error(cli, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    assert_clean_error(cli("compile", "--out", str(target)), "Not a directory")


def test_brackets_in_a_message_print_as_text(cli):
    # Rich would read "[...]" as markup; the error must show the list of choices verbatim.
    text = assert_clean_error(cli("serve", "1", "--config", '{"bogus": 1}'))
    assert "known fields are ['affinity'," in text


def test_console_script_error_has_no_traceback():
    """The real entry point, real streams: stdout empty, one line on stderr, exit code 1."""
    outcome = run_script("predict", "A;B", "--data", "[[1]]", timeout=60)
    assert outcome.exit_code == 1
    assert_clean_error(outcome, NOT_DNS)


def test_usage_errors_exit_nonzero_without_traceback(cli):
    outcome = run_script("serve", "iris", "--timeout", "soon", timeout=60)
    assert outcome.exit_code == 2
    assert_clean_error(outcome, "timeout", "kfp-serve serve --help")


def test_serving_an_unknown_model_reference_names_the_known_ones(cli, iris_model):
    outcome = cli("serve", "no-such-model@champion", "--dry-run")
    assert outcome.exit_code == 1
    assert_clean_error(outcome, "no-such-model")
    outcome = cli("serve", "cli-iris@champion", "--dry-run")
    assert_clean_error(outcome, "model 'cli-iris' has no alias 'champion'")


def test_debug_shows_the_traceback():
    outcome = run_script("--debug", "predict", "A;B", "--data", "[[1]]", timeout=60)
    assert outcome.exit_code != 0
    assert "Traceback" in outcome.stderr and "InvalidNameError" in outcome.stderr


def test_version_prints_the_package_version():
    from kfp_serve import __version__

    outcome = run_script("--version", timeout=30)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.strip() == f"kfp-serve {__version__}"


def _readme_commands() -> set[str]:
    """The sub-commands of the README's command table (``kfp-serve X`` opening a row)."""
    import re

    return {m.group(1) for line in README.read_text().splitlines()
            if (m := re.match(r"\| `kfp-serve ([a-z]+)", line))}


def test_readme_command_table_matches_help():
    outcome = run_script("--help", timeout=30)
    assert outcome.exit_code == 0, outcome.stderr
    # A command's row starts right after "│ "; wrapped description lines are indented.
    listed = {line.split()[1] for line in outcome.stdout.splitlines()
              if line.startswith("│ ") and line[2:3].strip() and line[2] != "-"}
    assert _readme_commands() == listed


def test_pipelines_lists_every_parameter_with_default_and_description():
    import json

    from kfp_serve.pipelines import PIPELINES

    outcome = run_script("pipelines", "--output", "json", timeout=60)
    assert outcome.exit_code == 0, outcome.stderr
    listed = {p["pipeline"]: p for p in json.loads(outcome.stdout)}
    assert set(listed) == set(PIPELINES)
    for name, pipeline in PIPELINES.items():
        rows = {r["parameter"]: r for r in listed[name]["parameters"]}
        assert set(rows) == set(pipeline.component_spec.inputs), name
        assert all(r["description"] for r in rows.values()), name
    assert listed["xgboost"]["parameters"][0]["default"] == "xgboost-model"


def test_run_help_lists_pipelines_and_their_parameters():
    outcome = run_script("run", "--help", timeout=60)
    assert outcome.exit_code == 0, outcome.stderr
    text = " ".join(outcome.stdout.split())
    for fragment in ("sklearn-transformer:", "xgboost:", "target_column (default",
                     "dataset (default", "model_version (default"):
        assert fragment in text, fragment
