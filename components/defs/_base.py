"""The decorator every kfp-serve component uses: one image, nothing installed at run time."""

from __future__ import annotations

import functools
import os

from kfp import dsl

from kfp_serve.serving.constants import DEFAULT_IMAGE, IMAGE_ENV


def component_image() -> str:
    """The image components run in: ``KFP_SERVE_IMAGE`` at compile time, else the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


#: ``@component`` for kfp-serve: the image already holds kfp-serve and kfp, so neither
#: ``packages_to_install`` nor kfp's own runtime ``pip install kfp`` is wanted (a pod without
#: network access to PyPI must still run, and kfp.local must not pip-install into the venv).
component = functools.partial(
    dsl.component, base_image=component_image(), install_kfp_package=False
)
