"""Errors raised by the serving layer."""

from kfp_serve.errors import KfpServeError


class ServeConfigError(KfpServeError, ValueError):
    """A ServeConfig (or a manifest input) that is not valid; the message names the path."""


class ServingError(KfpServeError):
    """An endpoint could not be applied, reached, or made Ready."""
