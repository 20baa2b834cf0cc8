"""Palette files for Elyra's visual pipeline editor, generated from the KFP components.

Elyra 4.1 reads only the KFP v1 component format (``name``, ``description``, ``inputs``,
``outputs``, ``implementation.container``) and silently drops compiled v2 IR YAML. Each palette
file is derived from a component's own spec and docstring (no second definition to drift) and
runs the same Python function in the same image through ``python -m kfp_serve.components.entry``.

Command-line contract of the entry point (``kfp_serve.components.entry`` parses the same):

- every parameter input: ``--NAME VALUE`` (``{inputValue: NAME}``);
- every artifact input: ``--NAME PATH`` (``{inputPath: NAME}``), inside an ``if isPresent``
  block when the input is optional;
- every output (artifact or returned value): ``--output-NAME PATH`` (``{outputPath: NAME}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

ENTRY_MODULE = "kfp_serve.components.entry"
OUTPUT_FLAG_PREFIX = "--output-"
#: v2 parameter type -> v1 type name (both are understood by kfp and by Elyra).
PARAMETER_TYPES = {"String": "String", "Integer": "Integer", "Float": "Float", "Boolean": "Bool"}


def is_artifact_type(type_name: str) -> bool:
    """True for v2 artifact types such as ``system.Model@0.0.1``."""
    return type_name.startswith("system.")


def is_list_type(type_name: str) -> bool:
    """True for list parameters (``List``, ``typing.List[int]``): JSON arrays on the wire."""
    return type_name == "List" or type_name.startswith(("List[", "typing.List"))


def v1_type(type_name: str) -> str:
    """The v1 type name of a v2 input/output type (``system.Model@0.0.1`` -> ``Model``)."""
    if is_artifact_type(type_name):
        return type_name.split("@", 1)[0].split(".", 1)[1]
    if is_list_type(type_name):
        return "JsonArray"
    try:
        return PARAMETER_TYPES[type_name]
    except KeyError:
        raise ValueError(f"no palette type for component type {type_name!r}") from None


def in_palette(component: PythonComponent) -> bool:
    """Whether the v1 format can describe the component: it has no input taking a list of
    artifacts (``dsl.Collected`` from a loop), which a visual editor cannot wire either."""
    return not any(getattr(i, "is_artifact_list", False)
                   for i in component.component_spec.inputs.values())


def palette_names() -> list[str]:
    """The components that get a palette file, in pipeline order."""
    from kfp_serve.components import all_components

    return [name for name, c in all_components().items() if in_palette(c)]


def display_name(component_name: str) -> str:
    """``smoke_predict`` -> ``kfp-serve: smoke predict`` (how the palette lists it)."""
    return "kfp-serve: " + component_name.replace("_", " ").replace("-", " ")


def docstring_descriptions(func: Any) -> dict[str, str]:
    """Descriptions of every documented argument and return value of a component function.

    KFP only keeps descriptions of parameters and returned values; output artifacts are
    documented under ``Args`` too, so the docstring is read again here.
    """
    import docstring_parser

    parsed = docstring_parser.parse(func.__doc__ or "")
    found = {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params}
    for item in parsed.many_returns or []:
        # "name: text" lines under Returns come back with the name as return_name.
        if item.return_name:
            found[item.return_name] = " ".join((item.description or "").split())
    return found


def component_description(func: Any) -> str:
    """The docstring's summary and body (no Args/Returns), as one paragraph per block."""
    import docstring_parser

    parsed = docstring_parser.parse(func.__doc__ or "")
    parts = [parsed.short_description or "", parsed.long_description or ""]
    return "\n\n".join(" ".join(p.split()) for p in parts if p).strip()


def palette_spec(name: str, component: PythonComponent, image: str) -> dict[str, Any]:
    """The v1 component spec (a dict ready for YAML) of one kfp-serve component.

    Args:
        name: The component's name in ``components`` (e.g. ``"smoke_predict"``).
        component: The KFP component object.
        image: The image the container runs (the components' base image).
    """
    spec = component.component_spec
    docs = docstring_descriptions(component.python_func)
    inputs: list[dict[str, Any]] = []
    args: list[Any] = []
    for input_name, item in spec.inputs.items():
        entry: dict[str, Any] = {"name": input_name, "type": v1_type(item.type)}
        description = docs.get(input_name) or item.description
        if description:
            entry["description"] = description
        if is_artifact_type(item.type):
            if item.optional:
                entry["optional"] = True
                args.append({"if": {"cond": {"isPresent": input_name},
                                    "then": [f"--{input_name}", {"inputPath": input_name}]}})
            else:
                args += [f"--{input_name}", {"inputPath": input_name}]
        else:
            if item.default is not None:
                entry["default"] = _v1_default(item.default)
            elif item.optional:
                entry["optional"] = True
            args += [f"--{input_name}", {"inputValue": input_name}]
        inputs.append(entry)
    outputs: list[dict[str, Any]] = []
    for output_name, item in (spec.outputs or {}).items():
        entry = {"name": output_name, "type": v1_type(item.type)}
        description = docs.get(output_name) or item.description
        if description:
            entry["description"] = description
        outputs.append(entry)
        args += [f"{OUTPUT_FLAG_PREFIX}{output_name}", {"outputPath": output_name}]
    return {
        "name": display_name(name),
        "description": component_description(component.python_func),
        "metadata": {"annotations": {"kfp-serve.kubeflow.org/component": name}},
        "inputs": inputs,
        "outputs": outputs,
        "implementation": {
            "container": {
                "image": image,
                "command": ["python3", "-m", ENTRY_MODULE, name],
                "args": args,
            }
        },
    }


def palette_yaml(name: str, component: PythonComponent, image: str) -> str:
    """:func:`palette_spec` as YAML text, with a header saying it is generated."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # Multi-line descriptions read best as literal blocks in the generated file.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    body = yaml.dump(
        palette_spec(name, component, image), Dumper=_Dumper, sort_keys=False, width=100,
        allow_unicode=True,
    )
    return (
        "# Generated by `python -m kfp_serve.build` from components/defs; do not edit.\n"
        "# KFP v1 component format, for Elyra's pipeline editor palette.\n" + body
    )


def _v1_default(value: Any) -> str:
    # v1 defaults are strings; booleans in the lower-case form kfp and Elyra both parse.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
