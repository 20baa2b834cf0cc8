"""kfp-serve's top: the ``kfp-serve`` command line (``kfp_serve.cli``) and, for Kale-tagged
notebooks, ``kfp_serve.kale_steps``.

Kale pip-installs the top-level package of every import in a notebook's ``imports`` cell, so
``from kfp_serve import kale_steps`` resolves to this distribution (already in the base image),
where ``import kale_steps`` would send pip looking for a PyPI package of that name.
"""
