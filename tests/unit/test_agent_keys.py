"""identities.AgentKeys: ssh-agent's keys are listed once per run; signatures still go to
the agent, over a connection each login opens only when it signs.

A real ``ssh-agent`` holds a real key (``ssh-keygen``); no fake agent.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from meshrun.transport.identities import AgentKeys

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-agent") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH's ssh-agent and ssh-keygen",
)


def _key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path


def _add(sock: Path, key: Path) -> None:
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
    subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):  # ssh-agent -D binds its socket, then serves
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert sock.exists(), "ssh-agent did not start"
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def test_listed_once_and_signed_by_the_agent(tmp_path: Path, agent: Path) -> None:
    first = _key(tmp_path, "first")
    _add(agent, first)
    keys = AgentKeys()
    listing = keys.listing(str(agent))
    kind, b64 = Path(f"{first}.pub").read_text().split()[:2]
    public = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    assert listing == ((public.asbytes(), "first"),)

    _add(agent, _key(tmp_path, "second"))  # the run goes on with what it listed
    assert keys.listing(str(agent)) == listing

    login = keys.agent(str(agent))
    assert login is not None
    try:
        (held,) = login.get_keys()
        assert login._conn is None  # nothing asked of the agent yet
        signature = held.sign_ssh_data(b"session data", "ssh-ed25519")
        assert login._conn is not None
        assert public.verify_ssh_sig(b"session data", paramiko.Message(signature))
    finally:
        login.close()
    assert login._conn is None


# paramiko's get_agent_connection leaves the socket of a failed connect to the collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_agent_that_cannot_be_used_is_asked_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = AgentKeys()
    gone = str(tmp_path / "no-agent.sock")
    assert keys.agent(gone) is None
    assert keys.agent(gone) is None
    assert keys.agent("none") is None
    assert len([r for r in caplog.records if "not usable" in r.getMessage()]) <= 1
