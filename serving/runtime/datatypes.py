"""The KServe v2 (Open Inference Protocol) tensor datatypes, named once.

Plain data, no numpy import: the client (``serving/endpoint.py``, which must stay cheap to
import) and the runtime's codec both read their tables from here.
"""

from __future__ import annotations

#: v2 numeric datatypes and the numpy dtype each carries, as (``dtype.kind``, ``dtype.itemsize``)
#: (``numpy.dtype(f"{kind}{itemsize}")`` is the dtype itself).
V2_NUMERIC_DATATYPES: dict[str, tuple[str, int]] = {
    "FP16": ("f", 2),
    "FP32": ("f", 4),
    "FP64": ("f", 8),
    "INT8": ("i", 1),
    "INT16": ("i", 2),
    "INT32": ("i", 4),
    "INT64": ("i", 8),
    "UINT8": ("u", 1),
    "UINT16": ("u", 2),
    "UINT32": ("u", 4),
    "UINT64": ("u", 8),
    "BOOL": ("b", 1),
}
#: The v2 datatype of strings and other objects.
V2_BYTES = "BYTES"
