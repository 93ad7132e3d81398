"""GNU parallel over OpenSSH's ssh: its --sshloginfile and the ControlMaster cleanup.

bench/fanout runs ``parallel --nonall`` with one plain login per host (cold handshakes,
with OpenSSH's default key exchange or curve25519-sha256); bench/dispatch and
bench/schedule run a list of commands with ``-jN`` per login, each login multiplexed
over a ControlMaster (``control_dir``), whose masters ``stop_masters`` ends after every
run so that each run starts cold, as the other tools do. Every login checks host keys
(StrictHostKeyChecking=yes against the fleet's known_hosts) and uses only the fleet's key.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import LOOPBACK

if TYPE_CHECKING:
    from meshrun.testing.fleet import Fleet

#: The kex paramiko negotiates: OpenSSH 9.2's default (sntrup761x25519) costs much more
#: CPU per connection, which on a 2-CPU box is most of GNU parallel's time.
X25519 = "curve25519-sha256"
#: How long a finished run's masters may take to remove their sockets.
MASTERS_EXIT_S = 5.0


def executable() -> str:
    return shutil.which("parallel") or "parallel"


def ssh_login(
    fleet: Fleet, port: int, *, kex: str | None = None, control_dir: Path | None = None
) -> list[str]:
    """One host's OpenSSH argv, without the destination and the command."""
    options = [
        f"UserKnownHostsFile={fleet.known_hosts}",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
    ]
    if kex:
        options.append(f"KexAlgorithms={kex}")
    if control_dir is not None:
        options += ["ControlMaster=auto", f"ControlPath={control_dir}/%C", "ControlPersist=60"]
    return ["ssh", "-p", str(port), "-i", str(fleet.client_key)] + [
        word for option in options for word in ("-o", option)
    ]


def write_sshlogins(
    fleet: Fleet,
    path: Path,
    *,
    kex: str | None = None,
    control_dir: Path | None = None,
    jobs: int | None = None,
) -> Path:
    """A --sshloginfile: ``[JOBS/]ssh ... user@127.0.0.1`` per host of the fleet."""
    prefix = "" if jobs is None else f"{jobs}/"
    path.write_text(
        "".join(
            f"{prefix}{shlex.join(ssh_login(fleet, h.port, kex=kex, control_dir=control_dir))} "
            f"{fleet.user}@{LOOPBACK}\n"
            for h in fleet.hosts
        )
    )
    return path


def stop_masters(fleet: Fleet, control_dir: Path) -> None:
    """``ssh -O exit`` every master left by a GNU parallel run (ControlPersist)."""
    if not any(control_dir.iterdir()):
        return
    procs = [
        subprocess.Popen(
            [
                *ssh_login(fleet, h.port, kex=X25519, control_dir=control_dir),
                "-O",
                "exit",
                f"{fleet.user}@{LOOPBACK}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h in fleet.hosts
    ]
    for p in procs:
        p.wait(timeout=10)
    deadline = time.monotonic() + MASTERS_EXIT_S
    while any(control_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
