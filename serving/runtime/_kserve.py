"""Import kserve without letting it read this process's command line.

``kserve.model_server`` runs ``argparse.parse_known_args()`` on ``sys.argv`` at import time, so a
runtime's own flags (``--predictor_protocol v3``, ``--http_port``...) would be parsed by kserve's
parser too: it could exit the process on a value it does not know, and its module-level
defaults would silently depend on our flags. Importing through this module hides ``sys.argv``
for the duration of the import; everything else imports kserve from here.
"""

from __future__ import annotations

import sys

_saved_argv = sys.argv
sys.argv = sys.argv[:1]
try:
    import kserve  # noqa: E402
    from kserve.errors import InvalidInput, ModelNotReady  # noqa: E402
    from kserve.model import InferenceVerb  # noqa: E402
    from kserve.protocol.infer_type import InferRequest  # noqa: E402
finally:
    sys.argv = _saved_argv

__all__ = ["kserve", "InvalidInput", "ModelNotReady", "InferenceVerb", "InferRequest"]
