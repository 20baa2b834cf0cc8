"""Run the API double standalone: ``python -m tests.kube_double [--kubeconfig PATH]``.

Prints the URL and the kubeconfig path, then serves until interrupted (for benchmarks and for
trying kubectl-free clients by hand).
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path

from tests.kube_double.server import KubeDouble


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_double")
    parser.add_argument("--kubeconfig", type=Path, help="where to write the kubeconfig")
    parser.add_argument("--namespace", default="default", help="the context's namespace")
    parser.add_argument("--ready-delay", type=float, default=0.05,
                        help="seconds before the fake KServe controllers (InferenceService, "
                        "TrainedModel) set Ready")
    parser.add_argument("--no-validate", action="store_true", help="skip CRD schema validation")
    args = parser.parse_args(argv)
    double = KubeDouble(validate=not args.no_validate).start()
    double.kserve.program(delay=args.ready_delay)
    double.trained_models.program(delay=args.ready_delay)
    path = args.kubeconfig or Path(tempfile.mkdtemp(prefix="kube-double-")) / "kubeconfig"
    double.write_kubeconfig(path, namespace=args.namespace)
    print(f"kube double at {double.url} (validation {'on' if double.validate else 'off'})")
    print(f"KUBECONFIG={path}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    main()
