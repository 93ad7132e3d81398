"""A user's world on this machine: a non-root account with its own ~/.ssh and ssh-agent.

OpenSSH reads ``~/.ssh`` from the passwd entry, not ``$HOME``, so testing ssh_config
semantics needs a real account whose home is a directory of the test's. Tests run as
root (CI); the account is made with ``useradd`` and removed at the end. meshrun runs as
that user from an interpreter it can read: the test interpreter when it can, otherwise a
virtual environment made from ``/usr/bin/python3`` with meshrun's dependencies (the
pyenv interpreter of a developer machine lives under ``/root``, mode 700).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_VENV = Path(tempfile.gettempdir()) / "meshrun-user-world-venv"
_DEPS = ["paramiko>=3.4", "cryptography>=42", "zeroconf>=0.130"]


def _as_user(user: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[arg-type]
    )


def _readable_python(user: str, src: Path) -> str:
    """An interpreter ``user`` can run meshrun with (``src`` on PYTHONPATH)."""
    probe = ["-c", "import paramiko, cryptography, zeroconf"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)}
    if _as_user(user, [sys.executable, *probe], env=env, cwd="/").returncode == 0:
        return sys.executable
    python = _VENV / "bin" / "python"
    if not python.exists() or _as_user(user, [str(python), *probe], env=env, cwd="/").returncode:
        shutil.rmtree(_VENV, ignore_errors=True)
        made = subprocess.run(
            ["/usr/bin/python3", "-m", "venv", str(_VENV)], capture_output=True, text=True
        )
        if made.returncode:
            pytest.skip(f"cannot make a venv from /usr/bin/python3: {made.stderr.strip()}")
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *_DEPS], capture_output=True, text=True
        )
        if pip.returncode:
            pytest.fail(f"pip install into {_VENV} failed: {pip.stderr[-2000:]}")
        os.chmod(_VENV, 0o755)
    return str(python)


@dataclass
class UserWorld:
    """One account: run meshrun, ssh and ssh-agent as it; write its ~/.ssh."""

    name: str
    home: Path
    python: str
    src: Path
    agent_sock: Path | None = None
    _agent_pid: int | None = field(default=None, repr=False)

    @property
    def ssh_dir(self) -> Path:
        return self.home / ".ssh"

    def env(self, *, agent: bool = True, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PYTHONPATH": str(self.src),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if agent and self.agent_sock is not None:
            env["SSH_AUTH_SOCK"] = str(self.agent_sock)
        env.update(extra)
        return env

    def write(self, relative: str, text: str, mode: int = 0o600) -> Path:
        """A file under the account's home, owned by it."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(text)
        path.chmod(mode)
        shutil.chown(path.parent, self.name, self.name)
        shutil.chown(path, self.name, self.name)
        return path

    def copy_key(self, source: Path, relative: str, passphrase: str | None = None) -> Path:
        """Copy a private key (and its .pub) in; re-encrypt it with ``passphrase``."""
        key = self.write(relative, source.read_text())
        pub = source.with_name(source.name + ".pub")
        if pub.exists():
            self.write(relative + ".pub", pub.read_text(), 0o644)
        if passphrase is not None:
            done = subprocess.run(
                ["ssh-keygen", "-p", "-q", "-N", passphrase, "-f", str(key)],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
        return key

    def run(self, *argv: str, agent: bool = True, timeout: float = 60, **env: str) -> Run:
        try:
            proc = _as_user(
                self.name,
                list(argv),
                env=self.env(agent=agent, **env),
                cwd=str(self.home),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:  # the partial output says where it hung
            out, err = (
                x.decode() if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)
            )
            return Run(list(argv), -9, out, f"{err}\n[timed out after {timeout:g}s]")
        return Run(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def meshrun(
        self, *args: str | os.PathLike[str], agent: bool = True, timeout: float = 60, **env: str
    ) -> Run:
        code = "import sys; from meshrun.cli.app import main; sys.argv[0] = 'meshrun'; main()"
        return self.run(
            self.python, "-c", code, *map(str, args), agent=agent, timeout=timeout, **env
        )

    def ssh_g(self, alias: str, *extra: str) -> dict[str, list[str]]:
        """``ssh -G`` as this user: every setting OpenSSH resolved."""
        r = self.run("ssh", "-G", *extra, alias)
        assert r.rc == 0, r.describe()
        out: dict[str, list[str]] = {}
        for line in r.stdout.splitlines():
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
        return out

    def start_agent(self) -> None:
        sock = self.home / "agent.sock"
        r = self.run("ssh-agent", "-a", str(sock), "-s", agent=False)
        assert r.rc == 0, r.describe()
        pid = next(
            int(part.split("=")[1].rstrip(";"))
            for part in r.stdout.split()
            if part.startswith("SSH_AGENT_PID=")
        )
        self.agent_sock, self._agent_pid = sock, pid

    def ssh_add(self, key: Path, passphrase: str | None = None) -> None:
        assert self.agent_sock is not None
        extra: dict[str, str] = {}
        if passphrase is not None:
            askpass = self.write(".askpass", f"#!/bin/sh\necho '{passphrase}'\n", 0o700)
            extra = {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        r = self.run("ssh-add", str(key), **extra)
        assert r.rc == 0, r.describe()

    def stop_agent(self) -> None:
        if self._agent_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._agent_pid, 15)
        self.agent_sock = self._agent_pid = None


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, object]:
        return dict(json.loads(self.stdout))

    def describe(self) -> str:
        return (
            f"\n$ {' '.join(self.argv)}\nrc={self.rc}\n--- stdout ---\n{self.stdout[-3000:]}"
            f"\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def make_user_world(base: Path) -> UserWorld:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root with useradd/runuser to make a non-root test account")
    name = "mrt" + secrets.token_hex(4)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    home = base / name
    made = subprocess.run(
        ["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], capture_output=True, text=True
    )
    if made.returncode:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    home.chmod(0o755)
    src = base / "src"
    if not src.exists():
        shutil.copytree(
            REPO / "meshrun", src / "meshrun", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in [src, *src.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    world = UserWorld(name=name, home=home, python="", src=src)
    world.python = _readable_python(name, src)
    return world


def remove_user_world(world: UserWorld) -> None:
    world.stop_agent()
    subprocess.run(["pkill", "-KILL", "-u", world.name], capture_output=True)
    subprocess.run(["userdel", "-r", world.name], capture_output=True)
