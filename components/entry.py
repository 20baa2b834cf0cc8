"""Run a kfp-serve component from the command line: the entry point of the palette files.

``python -m kfp_serve.components.entry COMPONENT --INPUT VALUE ... --output-OUTPUT PATH ...`` calls
the
same Python function the KFP component wraps, with KFP artifact objects pointing at the given
paths, then writes each returned value to its output path (the KFP v1 ``outputPath`` contract)
and each metrics artifact's metadata as JSON. See ``kfp_serve.components.palette`` for the flags.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from kfp_serve.components.palette import (
    OUTPUT_FLAG_PREFIX,
    is_artifact_type,
    is_list_type,
    v1_type,
)

_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}
#: Artifact types whose content is their metadata (KFP keeps it in the executor output).
_METADATA_ARTIFACTS = {"Metrics", "ClassificationMetrics", "SlicedClassificationMetrics"}


def parse_value(text: str, type_name: str, name: str) -> Any:
    """Convert a command-line string to the component parameter's type."""
    try:
        if type_name == "Integer":
            return int(text)
        if type_name == "Float":
            return float(text)
    except ValueError:
        raise SystemExit(f"--{name}: expected {type_name.lower()}, got {text!r}") from None
    if type_name == "Boolean":
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise SystemExit(f"--{name}: expected true or false, got {text!r}")
    if is_list_type(type_name):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise SystemExit(f"--{name}: expected a JSON array such as [1, 2], got {text!r}")
        return value
    return text


def format_value(value: Any) -> str:
    """How a returned value is written to its output file (what KFP reads back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def build_parser(name: str, component: Any) -> argparse.ArgumentParser:
    """The argument parser of one component, derived from its spec."""
    from kfp_serve.components.palette import component_description

    spec = component.component_spec
    parser = argparse.ArgumentParser(
        prog=f"python -m kfp_serve.components.entry {name}",
        description=component_description(component.python_func),
    )
    for input_name, item in spec.inputs.items():
        required = not item.optional and item.default is None
        kind = "PATH" if is_artifact_type(item.type) else v1_type(item.type).upper()
        parser.add_argument(
            f"--{input_name}", required=required, metavar=kind, help=item.description
        )
    for output_name, item in (spec.outputs or {}).items():
        parser.add_argument(
            f"{OUTPUT_FLAG_PREFIX}{output_name}", dest=f"output__{output_name}", required=True,
            metavar="PATH", help=f"where to write {output_name} ({v1_type(item.type)})",
        )
    return parser


def run(name: str, argv: list[str]) -> dict[str, Any]:
    """Run component ``name`` with command-line ``argv``; returns the returned values by name."""
    from kfp.dsl.types.type_utils import ARTIFACT_CLASSES_MAPPING

    from kfp_serve.components import COMPONENT_NAMES, get_component

    if name not in COMPONENT_NAMES:
        raise SystemExit(f"unknown component {name!r}; choose one of {list(COMPONENT_NAMES)}")
    component = get_component(name)
    spec = component.component_spec
    args = vars(build_parser(name, component).parse_args(argv))

    kwargs: dict[str, Any] = {}
    for input_name, item in spec.inputs.items():
        value = args.get(input_name)
        if value is None:
            continue  # the function's own default applies
        if is_artifact_type(item.type):
            cls = ARTIFACT_CLASSES_MAPPING[v1_type(item.type).lower()]
            kwargs[input_name] = cls(name=input_name, uri=value, metadata={})
        else:
            kwargs[input_name] = parse_value(value, item.type, input_name)
    artifacts_out: dict[str, Any] = {}
    for output_name, item in (spec.outputs or {}).items():
        path = args[f"output__{output_name}"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if is_artifact_type(item.type):
            cls = ARTIFACT_CLASSES_MAPPING[v1_type(item.type).lower()]
            artifacts_out[output_name] = kwargs[output_name] = cls(
                name=output_name, uri=path, metadata={}
            )

    returned = component.python_func(**kwargs)

    fields = getattr(inspect.signature(component.python_func).return_annotation, "_fields", ())
    values = dict(zip(fields, returned or (), strict=True))
    for field, value in values.items():
        Path(args[f"output__{field}"]).write_text(format_value(value))
    for output_name, artifact in artifacts_out.items():
        kind = v1_type(spec.outputs[output_name].type)
        if kind in _METADATA_ARTIFACTS and not os.path.exists(artifact.path):
            Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2))
    return values


def main(argv: list[str] | None = None) -> None:
    """``python -m kfp_serve.components.entry COMPONENT [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        from kfp_serve.components import COMPONENT_NAMES

        names = ",".join(COMPONENT_NAMES)
        print(f"usage: python -m kfp_serve.components.entry {{{names}}} [--help] ...")
        raise SystemExit(0 if argv else 2)
    values = run(argv[0], argv[1:])
    for key, value in values.items():
        print(f"{key}: {format_value(value)}")


if __name__ == "__main__":
    main()
