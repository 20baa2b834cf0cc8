"""Write every generated file: component IR YAML, palette files and pipeline IR YAML.

It sits above both ``kfp_serve.components`` and ``kfp_serve.pipelines`` (it writes the files of
each), so neither imports the other's layer for it.

``python -m kfp_serve.build`` regenerates the committed files in place (run it after changing a
component or pipeline; a test fails while they are stale). ``--out DIR`` writes the same tree
under DIR instead (``DIR/components``, ``DIR/components/palette``, ``DIR/pipelines``), plus
``DIR/runtimes/kfp-serve.yaml``, the ClusterServingRuntime for the same image. ``--image NAME``
compiles against that image (``KFP_SERVE_IMAGE`` does the same).

The committed files use the default image: the build refuses to overwrite them while
``KFP_SERVE_IMAGE`` is set, so a custom image never slips into the repository by accident.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

from kfp_serve.serving.constants import IMAGE_ENV

PALETTE = "palette"
RUNTIMES = "runtimes"
RUNTIME_FILE = "kfp-serve.yaml"
#: How to run this module (printed in errors and written into generated files' headers).
COMMAND = "python -m kfp_serve.build"


def _package_dir(package: str) -> Path:
    """The source folder of ``package`` (found without importing it)."""
    spec = find_spec(package)
    assert spec is not None and spec.origin is not None, package
    return Path(spec.origin).resolve().parent


def output_dirs(out_dir: str | os.PathLike[str] | None) -> tuple[Path, Path, Path]:
    """(component YAML dir, palette dir, pipeline YAML dir) for ``out_dir`` (None: in place)."""
    if out_dir is None:
        components = _package_dir("kfp_serve.components")
        return components, components / PALETTE, _package_dir("kfp_serve.pipelines")
    root = Path(out_dir)
    return root / "components", root / "components" / PALETTE, root / "pipelines"


def build_components(component_dir: Path, palette_dir: Path) -> list[Path]:
    """Compile each component to ``<name>.yaml`` and write its palette file."""
    from kfp import compiler

    from kfp_serve.components import all_components
    from kfp_serve.components.defs._base import component_image
    from kfp_serve.components.palette import in_palette, palette_yaml

    component_dir.mkdir(parents=True, exist_ok=True)
    palette_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, component in all_components().items():
        path = component_dir / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
        if not in_palette(component):
            continue
        palette = palette_dir / f"{name}.yaml"
        palette.write_text(palette_yaml(name, component, component_image()))
        written.append(palette)
    return written


def build_all(
    out_dir: str | os.PathLike[str] | None = None, *, image: str | None = None
) -> list[Path]:
    """Write all generated files; returns their paths.

    Args:
        out_dir: Where to write (see the module docstring); None regenerates the committed
            files in the source tree.
        image: The image to compile against (default: ``KFP_SERVE_IMAGE``, else the default).

    Raises:
        RuntimeError: ``out_dir`` is None while an image is set, or ``image`` is asked for
            after the components were defined with another (they read it once, on import).
    """
    if image:
        _use_image(image)
    if out_dir is None and os.environ.get(IMAGE_ENV):
        raise RuntimeError(
            f"{IMAGE_ENV} is set: the committed YAML must use the default image. Unset it, or "
            "write elsewhere with --out DIR"
        )
    component_dir, palette_dir, pipeline_dir = output_dirs(out_dir)
    written = build_components(component_dir, palette_dir)
    from kfp_serve.pipelines import compile_pipelines

    written += compile_pipelines(pipeline_dir)
    if out_dir is not None:
        written.append(write_runtime(Path(out_dir) / RUNTIMES / RUNTIME_FILE))
    return written


def _use_image(image: str) -> None:
    from kfp_serve.serving.constants import DEFAULT_IMAGE

    base = "kfp_serve.components.defs._base"
    if base in sys.modules and sys.modules[base].component_image() != image:
        raise RuntimeError(
            f"the components were already defined with image "
            f"{sys.modules[base].component_image()!r}: compile against {image!r} in a new "
            f"process (`{COMMAND} --out DIR --image {image}`)"
        )
    if image != DEFAULT_IMAGE or os.environ.get(IMAGE_ENV):
        os.environ[IMAGE_ENV] = image


def write_runtime(path: Path) -> Path:
    """The kfp-serve ClusterServingRuntime with its image set to the one compiled against."""
    from kfp_serve.components.defs._base import component_image
    from kfp_serve.serving.constants import DEFAULT_IMAGE

    source = _package_dir("kfp_serve.serving") / RUNTIMES / RUNTIME_FILE
    text = source.read_text()
    image_line = f"image: {DEFAULT_IMAGE}"
    if image_line not in text:
        raise RuntimeError(f"{source} has no {image_line!r} line to set the image in")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace(image_line, f"image: {component_image()}"))
    return path


def generated_files(root: Path | None = None) -> dict[str, Path]:
    """Relative name -> path of every generated file under ``root`` (None: the source tree)."""
    component_dir, palette_dir, pipeline_dir = output_dirs(root)
    found = {}
    for label, directory in (("components", component_dir), ("palette", palette_dir),
                             ("pipelines", pipeline_dir)):
        for path in sorted(directory.glob("*.yaml")):
            found[f"{label}/{path.name}"] = path
    return found


def stale_files() -> list[str]:
    """Generated files that differ from a fresh build (missing, extra or changed)."""
    with tempfile.TemporaryDirectory() as tmp:
        build_all(tmp)
        fresh = {k: p.read_text() for k, p in generated_files(Path(tmp)).items()}
    committed = {k: p.read_text() for k, p in generated_files().items()}
    return sorted(k for k in fresh.keys() | committed.keys() if fresh.get(k) != committed.get(k))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build, or ``--check`` for staleness."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__
    )
    parser.add_argument("--out", help="write under this directory instead of the source tree")
    parser.add_argument("--image", help="compile against this image (REGISTRY/kfp-serve:TAG)")
    parser.add_argument("--check", action="store_true",
                        help="only report generated files that are stale (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name}")
        if stale:
            print(f"run `{COMMAND}` to regenerate them", file=sys.stderr)
        return 1 if stale else 0
    try:
        written = build_all(args.out, image=args.image)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
