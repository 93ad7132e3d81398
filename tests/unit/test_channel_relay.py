"""The rsh helper and the channel relay, without SSH: a fake channel runs the remote
command on this machine (``sh -c``), so real rsync, real helper processes and the
relay's protocol, pumping, exit codes, refusals and clean-up are all exercised."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshrun.config.inventory import Host
from meshrun.errors import HostUnreachable
from meshrun.transport import rsh_helper, rsync
from meshrun.transport.channel_relay import ChannelRelay, RelayChannel

HOST = Host(name="h1", address="192.0.2.1")


class LocalChannel:
    """A RelayChannel whose "remote" command is a local ``sh -c`` in its own group."""

    def __init__(self, command: bytes) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", os.fsdecode(command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.closed = threading.Event()
        self.lost = False  # closed before the command ended: no exit status
        self.eof_received = False

    def recv(self, nbytes: int) -> bytes:
        assert self.proc.stdout is not None
        data = os.read(self.proc.stdout.fileno(), nbytes)
        if not data and not self.lost:
            self.eof_received = True
        return data

    def recv_stderr(self, nbytes: int) -> bytes:
        assert self.proc.stderr is not None
        return os.read(self.proc.stderr.fileno(), nbytes)

    def sendall(self, data: bytes) -> None:
        if self.closed.is_set():
            raise OSError("Socket is closed")
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def shutdown_write(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def exit_status_ready(self) -> bool:
        return self.closed.is_set() or self.proc.poll() is not None

    def recv_exit_status(self) -> int:
        if self.lost:
            return -1
        return self.proc.wait()

    def close(self) -> None:
        if self.closed.is_set():
            return
        if self.proc.poll() is None:
            self.lost = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.closed.set()

    def dispose(self) -> None:
        """After the relay is done with it (the readers have stopped)."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Opener:
    """Records every channel it opens; ``fail`` makes it refuse like a dead host."""

    def __init__(self) -> None:
        self.channels: list[LocalChannel] = []
        self.released = 0
        self.fail: Exception | None = None

    def __call__(self, host: Host, command: bytes) -> tuple[RelayChannel, Callable[[], None]]:
        if self.fail is not None:
            raise self.fail
        chan = LocalChannel(command)
        self.channels.append(chan)

        def release() -> None:
            chan.close()
            chan.dispose()
            self.released += 1

        return chan, release


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("meshrun-relay")]


@pytest.fixture
def relay() -> Iterator[tuple[ChannelRelay, Opener]]:
    opener = Opener()
    relay = ChannelRelay(opener)
    try:
        yield relay, opener
    finally:
        relay.close()


def helper(
    relay: ChannelRelay,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    host: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the helper as rsync would: ``HELPER SOCKET HOST ARGS...``."""
    rsh = relay.remote_shell(HOST)
    environ = {**os.environ, **rsh.env} if env is None else env
    return subprocess.run(
        [*rsh.argv, host or rsh.host, *args],
        input=stdin,
        capture_output=True,
        env=environ,
        timeout=30,
        check=False,
    )


# -- the helper's own parsing ------------------------------------------------------------


def test_helper_parses_rsync_argv_like_ssh() -> None:
    assert rsh_helper.parse_args(["/s", "meshrun-1", "rsync", "--server", "-e.Ls", ".", "d/"]) == (
        "/s",
        "",
        "meshrun-1",
        "rsync --server -e.Ls . d/",
    )
    assert rsh_helper.parse_args(["/s", "-l", "bob", "meshrun-2", "true"])[1:] == (
        "bob",
        "meshrun-2",
        "true",
    )
    assert rsh_helper.parse_args(["/s", "-lbob", "-4", "h", "a b", "c"])[1:] == (
        "bob",
        "h",
        "a b c",
    )
    for bad in (["/s"], ["/s", "h"], ["/s", "-p", "22", "h", "true"], ["/s", "-l"]):
        with pytest.raises(ValueError):
            rsh_helper.parse_args(bad)


def test_request_and_reply_encoding() -> None:
    request = rsh_helper.encode_request("sec", "meshrun-1", "", "rsync --server . 'a b'/")
    assert int.from_bytes(request[:4], "big") == len(request) - 4
    assert request[4:].split(b"\0") == [
        rsh_helper.MAGIC,
        b"sec",
        b"meshrun-1",
        b"",
        b"rsync --server . 'a b'/",
    ]
    with pytest.raises(ValueError):
        rsh_helper.encode_request("sec", "h", "", "a\0b")
    assert rsh_helper.decode_reply(b"0\n") == (0, "")
    assert rsh_helper.decode_reply(b"255 h1: the SSH connection was lost\n") == (
        255,
        "h1: the SSH connection was lost",
    )
    for bad in (b"", b"0", b"x\n", b"256\n", b"-1 no\n"):
        with pytest.raises(ValueError):
            rsh_helper.decode_reply(bad)


def test_the_helper_imports_nothing_of_meshrun_or_paramiko() -> None:
    code = (
        "import runpy, sys; sys.argv = ['x']; "
        f"runpy.run_path({rsh_helper.__file__!r}, run_name='not_main'); "
        "print(sorted(m for m in sys.modules if m.startswith(('meshrun', 'paramiko', 'socket'))))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# -- the relay -----------------------------------------------------------------------------


def test_socket_is_private_and_the_remote_shell_names_no_secret(
    relay: tuple[ChannelRelay, Opener],
) -> None:
    r, _ = relay
    directory = Path(r.path).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    rsh = r.remote_shell(HOST)
    secret = rsh.env[rsh_helper.TOKEN_ENV]
    assert len(secret) >= 64 and secret not in rsh.rsh and secret not in rsh.host
    assert rsh.argv[:3] == (sys.executable, "-I", "-S") and rsh.argv[-1] == r.path
    assert rsh.host == "meshrun-1" and r.remote_shell(HOST).host == "meshrun-1"
    assert r.remote_shell(Host(name="h2", address="x")).host == "meshrun-2"
    assert rsh.remote_dir("~/w") == "meshrun-1:w/" and rsh.remote_dir("/a/b/") == "meshrun-1:/a/b/"


def test_stdin_stdout_stderr_and_exit_status_are_relayed(
    relay: tuple[ChannelRelay, Opener],
) -> None:
    r, opener = relay
    data = os.urandom(3 << 20)
    done = helper(r, "cat;", "echo", "err", ">&2;", "exit", "7", stdin=data)
    assert done.returncode == 7, done.stderr
    assert done.stdout == data
    assert done.stderr == b"err\n"
    (chan,) = opener.channels
    assert chan.command == b"cat; echo err >&2; exit 7"  # joined with spaces, as ssh does
    assert opener.released == 1


def test_stdin_eof_reaches_the_remote_side(relay: tuple[ChannelRelay, Opener]) -> None:
    r, _ = relay
    done = helper(r, "wc -c; echo done", stdin=b"12345")
    assert done.returncode == 0 and done.stdout.split() == [b"5", b"done"]


def test_refusals_exit_255_with_a_reason(relay: tuple[ChannelRelay, Opener]) -> None:
    r, opener = relay
    no_secret = {k: v for k, v in os.environ.items() if k != rsh_helper.TOKEN_ENV}
    wrong = {**no_secret, rsh_helper.TOKEN_ENV: "0" * 64}
    for env in (no_secret, wrong):
        done = helper(r, "true", env=env)
        assert done.returncode == 255 and b"wrong or missing secret" in done.stderr
    done = helper(r, "true", host="meshrun-99")
    assert done.returncode == 255 and b"unknown host 'meshrun-99'" in done.stderr
    opener.fail = HostUnreachable("h1", "cannot connect to 192.0.2.1:22: refused")
    done = helper(r, "true")
    assert done.returncode == 255 and b"h1: cannot connect" in done.stderr
    assert opener.channels == []


def test_a_lost_connection_is_255_like_ssh(relay: tuple[ChannelRelay, Opener]) -> None:
    r, opener = relay
    result: list[subprocess.CompletedProcess[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(helper(r, "sleep 30")))
    thread.start()
    _wait(lambda: len(opener.channels) == 1 and r.active == 1)
    opener.channels[0].close()  # what paramiko does to every channel of a dead transport
    thread.join(10)
    assert result[0].returncode == 255
    assert b"h1: the SSH connection was lost" in result[0].stderr


def test_rsync_runs_through_the_helper(relay: tuple[ChannelRelay, Opener], tmp_path: Path) -> None:
    r, _ = relay
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "sub dir" / "ü 'q'.bin").write_bytes(os.urandom(200_000))
    (src / "big").write_bytes(os.urandom(5 << 20))
    rsh = r.remote_shell(HOST)
    back = tmp_path / "back"
    rsync.run(
        ["rsync", "-a", "-e", rsh.rsh, rsh.remote_dir(str(src)), f"{back}/"], "h1", env=rsh.env
    )
    assert (back / "big").read_bytes() == (src / "big").read_bytes()
    there = tmp_path / "there"
    rsync.run(
        ["rsync", "-a", "-e", rsh.rsh, f"{src}/", rsh.remote_dir(str(there))], "h1", env=rsh.env
    )
    assert (there / "sub dir" / "ü 'q'.bin").read_bytes() == (
        src / "sub dir" / "ü 'q'.bin"
    ).read_bytes()


def test_many_concurrent_transfers(relay: tuple[ChannelRelay, Opener]) -> None:
    r, opener = relay
    payloads = [os.urandom(100_000 + i) for i in range(16)]
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    def one(i: int) -> None:
        results[i] = helper(r, "cat", stdin=payloads[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[i].returncode == 0 and results[i].stdout == payloads[i] for i in range(16))
    assert opener.released == 16
    _wait(lambda: r.active == 0 and not r._threads)  # only the acceptor is left


def test_a_killed_parent_closes_the_channel(relay: tuple[ChannelRelay, Opener]) -> None:
    """rsync killed (SIGKILL, no chance to clean up): the helper notices, exits, and the
    relay closes the channel, which ends the remote side."""
    r, opener = relay
    rsh = r.remote_shell(HOST)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
         *rsh.argv, rsh.host, "sleep 60"],
        env={**os.environ, **rsh.env}, start_new_session=False,
    )  # fmt: skip
    _wait(lambda: len(opener.channels) == 1 and r.active == 1)
    chan = opener.channels[0]
    parent.kill()
    parent.wait()
    _wait(lambda: chan.closed.is_set() and r.active == 0)
    assert chan.lost and chan.proc.poll() is not None
    _wait(lambda: not _helper_processes(r.path))


def test_closing_the_relay_ends_transfers_and_leaves_nothing(tmp_path: Path) -> None:
    fds_before = _open_fds()
    threads_before = {t.ident for t in _relay_threads()}
    opener = Opener()
    r = ChannelRelay(opener)
    result: list[subprocess.CompletedProcess[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(helper(r, "sleep 60")))
    thread.start()
    _wait(lambda: r.active == 1)
    threads_before_close = {t.ident for t in _relay_threads()} - threads_before
    started = time.monotonic()
    r.close()
    thread.join(10)
    assert time.monotonic() - started < 5
    assert result[0].returncode == 255 and b"stopped" in result[0].stderr
    assert opener.channels[0].closed.is_set()
    assert not Path(r.path).parent.exists()
    assert not r._threads and not r._acceptor.is_alive()
    assert not [t for t in _relay_threads() if t.ident in threads_before_close]
    assert _open_fds() - fds_before == set()
    with pytest.raises(HostUnreachable, match="shutting down"):
        r.remote_shell(HOST)
    r.close()  # twice is fine


def _helper_processes(path: str) -> list[str]:
    out = subprocess.run(["ps", "-e", "-ww", "-o", "stat=,args="], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if path in line and not line.startswith("Z")]


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_rsync_knows_the_helpers_message_prefix() -> None:
    assert rsync.SHELL_MESSAGE_PREFIX == rsh_helper.MESSAGE_PREFIX


def test_a_killed_runs_relay_directory_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket as socket_module

    from meshrun.transport import channel_relay

    monkeypatch.setattr(channel_relay.tempfile, "gettempdir", lambda: str(tmp_path))
    old = time.time() - 3600
    dead = tmp_path / "meshrun-relay-dead"
    dead.mkdir(mode=0o700)
    with socket_module.socket(socket_module.AF_UNIX) as listener:
        listener.bind(str(dead / "relay.sock"))  # bound, never listening: like a killed run
    empty = tmp_path / "meshrun-relay-empty"
    empty.mkdir(mode=0o700)
    young = tmp_path / "meshrun-relay-young"
    young.mkdir(mode=0o700)
    other = tmp_path / "not-a-relay"
    other.mkdir()
    for path in (dead, empty, other):
        os.utime(path, (old, old))
    live = ChannelRelay(Opener())
    try:
        os.utime(Path(live.path).parent, (old, old))
        second = ChannelRelay(Opener())
        second.close()
        assert not dead.exists() and not empty.exists()
        assert young.exists() and other.exists() and Path(live.path).exists()
    finally:
        live.close()
