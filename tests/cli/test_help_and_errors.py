"""``--help`` everywhere, and every user error as one ``error:`` line with its fix, exit != 0."""

from __future__ import annotations

import socket

import pytest

from tests.cli.conftest import assert_clean_error, run_script

COMMANDS = ["run", "compile", "upload", "serve", "predict", "explain", "endpoints", "stop",
            "models", "lineage", "demo"]


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
    ("run-unknown-pipeline", ["run", "nope"], ["unknown pipeline 'nope'", "xgboost"]),
    ("run-param-without-equals", ["run", "xgboost", "--param", "oops"],
     ["--param 'oops'", "NAME=VALUE"]),
    ("run-unknown-param", ["run", "xgboost", "--param", "nope=1"],
     ["unknown parameter(s) ['nope']", "this pipeline takes", "endpoint_name="]),
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
    ("serve-config-unknown-nested-key",
     ["serve", "1", "--config", '{"predictor": {"container": {"resourcez": {}}}}'],
     ["predictor.container.resourcez"]),
    ("serve-unknown-artifact", ["serve", "987654"], ["no artifact with id 987654"]),
    ("serve-bad-name", ["serve", "1", "--name", "../x"], ["'../x'", NOT_DNS]),
    ("lineage-unknown-artifact", ["lineage", "987654"], ["no artifact with id 987654"]),
    ("predict-unknown-endpoint", ["predict", "no-such-endpoint", "--data", "[[1, 2, 3, 4]]"],
     ["no local endpoint named 'no-such-endpoint'", "kfp-serve endpoints"]),
    ("explain-unknown-endpoint", ["explain", "no-such-endpoint", "--data", "[[1]]"],
     ["no local endpoint named 'no-such-endpoint'"]),
    ("stop-unknown-endpoint", ["stop", "no-such-endpoint"],
     ["no local endpoint named 'no-such-endpoint' to stop", "kfp-serve endpoints"]),
    ("predict-path-name", ["predict", "../x", "--data", "[[1]]"], ["'../x'", NOT_DNS]),
    ("predict-shell-name", ["predict", "A;B", "--data", "[[1]]"], ["'A;B'", NOT_DNS]),
    ("stop-path-name", ["stop", "../x"], ["'../x'", NOT_DNS]),
    ("stop-shell-name", ["stop", "A;B"], ["'A;B'", NOT_DNS]),
    ("models-bad-kind", ["models", "--kind", "bogus"], ["kind 'bogus'", "'transformer'"]),
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
    line = assert_clean_error(cli("run", "nope"))
    assert "['sklearn-transformer', 'xgboost']" in line


def test_console_script_error_has_no_traceback():
    """The real entry point, real streams: stdout empty, one line on stderr, exit code 1."""
    outcome = run_script("predict", "A;B", "--data", "[[1]]", timeout=60)
    assert outcome.exit_code == 1
    assert_clean_error(outcome, NOT_DNS)


def test_usage_errors_exit_nonzero_without_traceback(cli):
    outcome = cli("serve", "not-a-number")
    assert outcome.exit_code == 2
    assert "Traceback" not in outcome.stderr
    assert "model_id" in outcome.stderr
