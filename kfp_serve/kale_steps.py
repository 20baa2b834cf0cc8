"""The Kale step helpers under the distribution's own name (see ``kfp_serve.__init__``)."""

from kale_steps import *  # noqa: F403 - a deliberate alias of the whole module
from kale_steps import __all__  # noqa: F401
