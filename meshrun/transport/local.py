"""The local connector: the embedded default when no --hosts is given.

It runs the same wrapper as the SSH connector, through a pipe instead of a channel, so
cancelling, timeouts and "nothing left behind" behave the same on a laptop.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.errors import Interrupted
from meshrun.transport import rsync
from meshrun.transport.base import (
    CommandOutcome,
    CommandRequest,
    OutputSink,
    RawResult,
    Stream,
    _discard,
)
from meshrun.transport.capture import HeadTail
from meshrun.transport.files import LocalFiles, put_files
from meshrun.transport.wrapper import KILL_GRACE_TENTHS, build_wrapper

_POLL_S = 0.1


class LocalConnection:
    """Runs commands on this machine as child processes."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._has_rsync: bool | None = None

    @property
    def host(self) -> Host:
        return self._host

    @property
    def host_key_fingerprint(self) -> str | None:
        return None

    def run(
        self,
        request: CommandRequest,
        *,
        on_output: OutputSink = _discard,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        script = build_wrapper(request.command, workdir=self._host.workdir, env=request.env)
        started = time.monotonic()
        deadline = None if request.timeout_s is None else started + request.timeout_s
        # A session of its own: the terminal's Ctrl-C reaches the coordinator only,
        # which then cancels through stdin like it does over SSH.
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:  # nothing started: a shortage here is tried again later
            shortage = resources.resource_error(exc, f"starting the command on {self._host.name}")
            if shortage is not None:
                raise shortage from exc
            raise
        assert proc.stdin and proc.stdout and proc.stderr
        keep: dict[Stream, HeadTail] = {"stdout": HeadTail(), "stderr": HeadTail()}
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        timed_out = cancelled = False
        stopped_at: float | None = None
        try:
            while sel.get_map():
                for key, _ in sel.select(_POLL_S):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    stream: Stream = key.data
                    keep[stream].write(data)
                    on_output(stream, data)
                now = time.monotonic()
                if stopped_at is None:
                    if cancel is not None and cancel.is_set():
                        cancelled = True
                    elif deadline is not None and now >= deadline:
                        timed_out = True
                    if cancelled or timed_out:
                        proc.stdin.close()  # the watcher kills the group
                        stopped_at = now
                elif now - stopped_at > KILL_GRACE_TENTHS / 10 + 2:
                    proc.kill()
                    break
            exit_code = proc.wait()
        finally:
            sel.close()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
        return CommandOutcome(
            exit_code=exit_code,
            stdout=keep["stdout"].value(),
            stderr=keep["stderr"].value(),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
        )

    def run_raw(self, command: str, *, stdin: bytes = b"", timeout_s: float = 60.0) -> RawResult:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            cwd=os.path.expanduser("~"),
            check=False,
        )
        return RawResult(done.returncode, done.stdout, done.stderr)

    # -- file transfer: this machine's own disk ---------------------------------------------

    def home(self) -> str:
        return os.path.expanduser("~")

    def has_rsync(self) -> bool:
        if self._has_rsync is None:
            self._has_rsync = shutil.which("rsync") is not None
        return self._has_rsync

    def open_files(self) -> LocalFiles:
        return LocalFiles()

    def get_files(
        self,
        root: str,
        paths: Sequence[str],
        into: Path,
        *,
        use_rsync: bool = True,
        cancel: threading.Event | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        """Plain copies (rsync has nothing to add on one disk); ``cancel`` is checked
        before each file."""
        base = Path(os.path.expanduser(root))
        for path in paths:
            if cancel is not None and cancel.is_set():
                raise Interrupted(f"{self._host.name}: pull stopped")
            target = into / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / path, target)

    def put_files(
        self,
        source: Path,
        files: Sequence[tuple[str, int]],
        root: str,
        *,
        use_rsync: bool = True,
        what: str = "push",
    ) -> None:
        """Each file copied beside its target and renamed into place."""
        with LocalFiles() as disk:
            put_files(disk, self._host.name, source, files, os.path.expanduser(root))

    def open_process(self, command: str) -> _PipeStream:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=os.path.expanduser("~"),
            start_new_session=True,
        )
        return _PipeStream(proc)


class _PipeStream:
    """A ProcessStream over a local child's stdin/stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin and proc.stdout
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._stdin.write(data)
            self._stdin.flush()

    def recv(self) -> bytes:
        try:
            return os.read(self._stdout.fileno(), 65536)
        except (OSError, ValueError):
            return b""

    @property
    def lost_reason(self) -> str | None:
        """A local pipe has no link to lose."""
        return None

    def close(self) -> None:
        with self._lock:
            if not self._stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    self._stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stdout.close()


class LocalConnector:
    """Hands out connections to the local machine."""

    def connect(self, host: Host) -> LocalConnection:
        return LocalConnection(host)

    def push(
        self,
        host: Host,
        *,
        root: str,
        paths: Sequence[str],
        excludes: Sequence[str],
        hide: Sequence[str] = (),
    ) -> None:
        if os.path.realpath(os.path.expanduser(host.workdir)) == os.path.realpath(root):
            return  # the workspace is already where the tasks run
        argv = ["rsync", "-a", "--relative", "--mkpath"]
        argv += rsync.mirror_options(excludes, hide)
        argv += rsync.sources(root, paths)
        argv.append(os.path.expanduser(host.workdir).rstrip("/") + "/")
        rsync.run(argv, host.name)

    def release(self, host: Host) -> None:
        """Nothing is pooled locally: each command's process is gone when it ends."""

    def close(self) -> None:
        """Nothing is pooled locally."""
