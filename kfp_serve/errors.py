"""The root of kfp-serve's errors, in a module every layer may import (it imports nothing).

Each package adds its own subclasses (``kfp_serve.artifacts.errors``,
``kfp_serve.serving.errors``, ...), so ``except KfpServeError`` catches every error kfp-serve
raises on purpose and nothing else.
"""


class KfpServeError(Exception):
    """Base of every error kfp-serve raises on purpose."""


class InputError(KfpServeError, ValueError):
    """An argument of a component or notebook step that cannot be used; the message names the
    argument and what it should look like."""
