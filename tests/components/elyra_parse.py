"""Parse palette files with Elyra's own KfpComponentParser; run by the Elyra venv's Python.

Usage: ``.venv-elyra/bin/python tests/components/elyra_parse.py FILE...``. Prints one JSON
object per file: {"file", "name", "properties": [{"id", "type", "required", "path"}]}, or exits
non-zero naming a file Elyra rejected (its parser only logs a warning and returns None).
"""

import json
import sys
from types import SimpleNamespace

from elyra.pipeline.catalog_connector import CatalogEntry, KfpEntryData
from elyra.pipeline.kfp.kfp_component_parser import KfpComponentParser
from elyra.pipeline.runtime_type import RuntimeProcessorType


def parse(path: str) -> dict:
    with open(path) as f:
        definition = f.read()
    catalog = SimpleNamespace(
        schema_name="local-file-catalog",
        runtime_type=RuntimeProcessorType.KUBEFLOW_PIPELINES,
        metadata={"categories": ["kfp-serve"]},
    )
    entry = CatalogEntry(KfpEntryData(definition=definition), {"path": path}, catalog, ["path"])
    components = KfpComponentParser().parse(entry)
    if not components:
        raise SystemExit(f"Elyra's KfpComponentParser rejected {path}")
    (component,) = components
    return {
        "file": path,
        "name": component.name,
        "description": component.description,
        "properties": [
            {"id": p.ref, "type": p.json_data_type, "required": p.required,
             "allowed": p.allowed_input_types}
            for p in component.properties
        ],
    }


if __name__ == "__main__":
    for file in sys.argv[1:]:
        print(json.dumps(parse(file)))
