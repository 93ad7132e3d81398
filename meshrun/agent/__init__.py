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
    """Content-addressed name: a changed agent is a new file, an unchanged one is reused.
    A module name (``agent_<hash>.py``), so the host's python3 imports it and keeps its
    bytecode beside it: compiling the 30 KB script was ~7 ms of every agent's start."""
    return f"agent_{hashlib.sha256(agent_source()).hexdigest()[:16]}.py"


#: How a host starts the agent at ``path``: imported as a module (its bytecode cached in
#: ``__pycache__`` beside it when the directory is writable), with the script's
#: directory, not the work directory, first on ``sys.path``, as ``python3 path`` has it:
#: a task's ``json.py`` must not shadow the agent's. stdout is the protocol.
AGENT_MAIN = (
    "import sys; sys.path[0] = sys.argv[1]; agent = __import__(sys.argv[2]); "
    "sys.stdout = sys.stderr; agent.Agent().main()"
)
