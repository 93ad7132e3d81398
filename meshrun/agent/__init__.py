"""The persistent host agent: its source (shipped to hosts) and the coordinator's client."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources


@cache
def agent_source() -> bytes:
    """The agent script's bytes, exactly as shipped to hosts."""
    return resources.files("meshrun.agent").joinpath("remote.py").read_bytes()


def agent_file_name() -> str:
    """Content-addressed name: a changed agent is a new file, an unchanged one is reused."""
    return f"agent-{hashlib.sha256(agent_source()).hexdigest()[:16]}.py"
