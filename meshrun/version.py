"""The installed distribution's version: one source, pyproject.toml's metadata.

Looked up on first use only (``importlib.metadata`` costs start-up time); a feature
that needs it (the agent's advert) imports this module, not the ``meshrun`` package.
"""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("meshrun")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__all__ = ["version"]
