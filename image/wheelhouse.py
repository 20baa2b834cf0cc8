"""Build the image's wheelhouse on the host: the venv's exact versions, as wheels.

``make image`` runs this, then installs from the wheelhouse with ``--no-index`` inside the image,
so the image build needs no network and gets the versions the tests ran against.

The venv's ``pip freeze`` becomes the constraints. A pin whose ``Requires-Python`` refuses the
base image's Python (soupsieve 4.1.3 wants >= 3.11.5; Debian bookworm ships 3.11.2) is replaced,
for the image only, by the newest release of that package that accepts it; every replacement is
printed and written to ``image-overrides.txt`` next to the wheels, and ``make image`` fails if the
resolver then finds no set that fits.

Run it with the venv's Python: ``.venv/bin/python image/wheelhouse.py --python-version 3.11.2
--out build/wheelhouse --no-deps ml-metadata==1.17.1 --no-deps kserve-storage==0.21.0``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_DIR = Path(__file__).resolve().parent.parent
# Files the Dockerfile reads from the wheelhouse (the build context).
CONSTRAINTS = "constraints.txt"
OVERRIDES = "image-overrides.txt"
NO_DEPS = "no-deps.txt"
# What the image installs from the wheelhouse: the project with the extra a Kale step needs.
PROJECT_NAME = "kfp-serve"
EXTRA = "kale"


def pip(*args: str) -> None:
    """Run this venv's pip; its output goes to the terminal, a failure stops the build."""
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def frozen() -> dict[str, str]:
    """{canonical name: version} of every distribution in this venv but the project itself."""
    pins = {canonicalize_name(d.metadata["Name"]): d.version
            for d in importlib.metadata.distributions()}
    pins.pop(canonicalize_name(PROJECT_NAME), None)
    return pins


def requires_python() -> dict[str, str]:
    """{canonical name: Requires-Python} of this venv's distributions that declare one."""
    declared = {canonicalize_name(d.metadata["Name"]): d.metadata.get("Requires-Python")
                for d in importlib.metadata.distributions()}
    return {name: spec for name, spec in declared.items() if spec}


def newest_accepting(name: str, python_version: str) -> str:
    """The newest release of ``name`` (a wheel) whose Requires-Python accepts ``python_version``.

    Raises:
        SystemExit: no such release exists on the index.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", python_version, "--dest", tmp, name],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode or not wheels:
            raise SystemExit(
                f"no release of {name!r} accepts the base image's Python {python_version}: "
                f"use a base with a newer Python (BASE_IMAGE=python:3.11-slim)\n{result.stderr}"
            )
        return wheels[0].name.split("-")[1]


def image_pins(python_version: str) -> tuple[dict[str, str], list[str]]:
    """The venv's pins, with those the image's Python refuses replaced; and a line per change."""
    pins = frozen()
    target = Version(python_version)
    changes = []
    for name, spec in requires_python().items():
        if name in pins and target not in SpecifierSet(spec):
            replacement = newest_accepting(name, python_version)
            changes.append(
                f"{name}=={replacement}  # venv has {pins[name]}, which needs Python {spec}; "
                f"the image's Python is {python_version}"
            )
            pins[name] = replacement
    return pins, changes


def build(python_version: str, out: Path, no_deps: list[str]) -> None:
    """Fill ``out`` with every wheel the image installs, plus the files the Dockerfile reads.

    Built next to ``out`` and renamed into place, so an interrupted build never leaves a
    wheelhouse that looks complete.
    """
    final = out
    out = final.with_name(final.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pins, changes = image_pins(python_version)
    no_deps_names = {canonicalize_name(Requirement(r).name) for r in no_deps}
    constraints = out / CONSTRAINTS
    # The --no-deps packages are installed separately: their own pins (protobuf<5 for
    # ml-metadata) must not constrain the resolution of the rest.
    constraints.write_text(
        "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n not in no_deps_names)
    )
    (out / OVERRIDES).write_text("".join(f"{line}\n" for line in changes))
    for line in changes:
        print(f"image override: {line}", flush=True)
    pip("wheel", "--quiet", "--wheel-dir", str(out), "--constraint", str(constraints),
        f"{REPO_DIR}[{EXTRA}]")
    if no_deps:
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *no_deps)
    (out / NO_DEPS).write_text("".join(f"{r}\n" for r in no_deps))
    wheels = list(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    print(f"wheelhouse: {len(wheels)} wheels, {size / 1e6:.0f} MB in {final}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make wheelhouse``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", required=True,
                        help="the base image's Python, X.Y.Z (make asks the base image)")
    parser.add_argument("--out", required=True, type=Path, help="the wheelhouse directory")
    parser.add_argument("--no-deps", action="append", default=[], metavar="REQ",
                        help="a requirement installed last, without its dependencies")
    args = parser.parse_args(argv)
    try:
        Version(args.python_version)
    except ValueError:
        parser.error(f"--python-version {args.python_version!r}: give X.Y.Z, e.g. 3.11.2 "
                     "(is the base image's python3 on its PATH?)")
    build(args.python_version, args.out, args.no_deps)


if __name__ == "__main__":
    sys.exit(main())
