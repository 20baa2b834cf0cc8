"""DNS-1123 name checks, applied wherever a user-chosen name enters kfp-serve.

Names become InferenceService names, Kubernetes labels, file names under KFP_SERVE_HOME and MLMD
artifact names, so one strict rule everywhere keeps them from escaping any of those (``../``,
``;``, newlines). Names are refused, never rewritten: a silently changed name would not be found.
"""

import re

from kfp_serve.artifacts.errors import InvalidNameError

# RFC 1123 label, the rule Kubernetes applies to most object names.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_MAX_LENGTH = 63
# A label value may also hold dots/underscores/upper case (Kubernetes "qualified value").
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Versions like "1.0.0" or "v2-rc1": also valid label values, so they can label a served model.
_VERSION = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def validate_name(value: object, field: str = "name") -> str:
    """Return ``value`` if it is a DNS-1123 label, else raise InvalidNameError naming ``field``."""
    if not isinstance(value, str):
        raise InvalidNameError(f"{field} must be a string, got {type(value).__name__}: {value!r}")
    if len(value) > DNS1123_MAX_LENGTH or not _DNS1123_LABEL.fullmatch(value):
        raise InvalidNameError(
            f"{field} {value!r} is not a valid DNS-1123 name: use at most {DNS1123_MAX_LENGTH} "
            "lower-case letters, digits and '-', starting and ending with a letter or digit "
            "(for example 'iris-classifier')"
        )
    return value


def validate_version(value: object, field: str = "version") -> str:
    """Return ``value`` if it is a safe version string (also a valid label value)."""
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise InvalidNameError(
            f"{field} {value!r} is not a valid version: use up to 63 letters, digits and "
            "'.', '_', '-', starting and ending with a letter or digit (for example '1.0.0')"
        )
    return value


def is_label_value(value: str) -> bool:
    """True if ``value`` may be used as a Kubernetes label value."""
    return len(value) <= DNS1123_MAX_LENGTH and bool(_LABEL_VALUE.fullmatch(value))


def next_patch(version: str) -> str:
    """``1.0.0`` -> ``1.0.1``; a version without a numeric last part gets ``.1``."""
    head, dot, last = version.rpartition(".")
    if dot and last.isdigit():
        return f"{head}.{int(last) + 1}"
    return f"{version}.1"
