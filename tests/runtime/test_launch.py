"""kfp_serve.serving.runtime.launch: free ports, detached servers with log files, fast failure."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_bad_model_dir_fails_fast_with_log_tail(tmp_path: Path):
    proc = start_server("predictor", "m", tmp_path / "missing", log_path=tmp_path / "p.log")
    try:
        with pytest.raises(ServingError) as exc:
            wait_ready(proc.url, timeout=120, proc=proc)
        assert "exited with code 2" in str(exc.value)
        assert "does not exist" in str(exc.value)
    finally:
        stop_server(proc)
    assert "does not exist" in (tmp_path / "p.log").read_text()


def test_transformer_needs_predictor_host(tmp_path: Path):
    with pytest.raises(ServingError, match="predictor_host"):
        start_server("transformer", "m", tmp_path, log_path=tmp_path / "t.log")


def test_wait_ready_times_out(tmp_path: Path):
    with pytest.raises(ServingError, match="not ready"):
        wait_ready(f"http://127.0.0.1:{free_port()}", timeout=0.3)


def test_kserve_flags_are_tolerated_and_argv_not_leaked():
    """Our flags do not reach kserve's import-time parser, and kserve's extra flags are fine."""
    code = (
        "import sys; sys.argv=['x','--predictor_protocol','v9','--http_port','1'];"
        "from kfp_serve.serving.runtime import _kserve;"
        "from kfp_serve.serving.runtime.server import parse_args;"
        "ns=parse_args('transformer',['--workers','1','--grpc_port','9','--enable_grpc','false',"
        "'--predictor_protocol','v2','--foo','bar']);"
        "print(ns.predictor_protocol, ns.http_host, ns.unknown)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "v2 127.0.0.1 ['--foo', 'bar']"
