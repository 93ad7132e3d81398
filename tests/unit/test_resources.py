"""meshrun.resources: the open-files limit raised, runs sized to what is free, and a
shortage of this process told from a host's fault. Limits are really lowered (the soft
RLIMIT_NOFILE of this process, restored after; a fresh process for raising it)."""

from __future__ import annotations

import errno
import resource
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from meshrun import resources
from meshrun.errors import DoesNotFit, ExitCode, HostUnreachable, ResourceExhausted


@pytest.fixture
def soft_limit() -> Iterator[Callable[[int], None]]:
    """``set(free)``: lower this process's soft RLIMIT_NOFILE to leave ``free``
    descriptors; the old limit comes back at teardown."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(free: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (resources.fds_in_use() + free, old[1]))

    yield lower
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _in_child(code: str, soft: int) -> str:
    """Run ``code`` in a fresh interpreter whose soft RLIMIT_NOFILE is ``soft``."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_raise_nofile_limit_goes_to_the_hard_limit_never_above() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    out = _in_child(
        """
        import resource
        from meshrun.resources import raise_nofile_limit
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        got = raise_nofile_limit()
        again = raise_nofile_limit()
        after = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(before[0], got, again, after[0], after[1])
        """,
        soft=256,
    )
    before, got, again, soft, hard_after = (int(x) for x in out.split())
    assert before == 256
    assert hard_after == hard  # the hard limit is never touched
    assert got == again == soft
    if hard != resource.RLIM_INFINITY:
        assert soft == hard
    else:
        assert soft > 256


def test_fds_available_counts_what_is_open(soft_limit: Callable[[int], None]) -> None:
    soft_limit(40)
    assert 38 <= resources.fds_available() <= 40
    with socket.socket(), socket.socket():
        assert 36 <= resources.fds_available() <= 38


def test_check_fits_refuses_naming_ulimit_and_parallel(soft_limit: Callable[[int], None]) -> None:
    soft_limit(30)
    resources.check_fits(20, "exec on 1 host at a time")
    with pytest.raises(DoesNotFit) as caught:
        resources.check_fits(100, "exec on 1 host at a time")
    text = str(caught.value)
    assert "exec on 1 host at a time needs about 100 file descriptors" in text
    assert "`ulimit -n" in text and "--parallel" in text
    assert caught.value.exit_code == ExitCode.USAGE


def test_fit_parallel_lowers_to_what_fits_with_one_warning(
    soft_limit: Callable[[int], None],
) -> None:
    soft_limit(resources.RESERVE_FDS + 10 * 6 + 3)
    fit, warning = resources.fit_parallel(
        32, fds_each=6, threads_each=3, what="exec on 64 hosts", option="--parallel"
    )
    assert fit == 10
    assert warning is not None and "\n" not in warning
    assert warning.startswith("--parallel 32 does not fit")
    assert "runs 10 at once" in warning and "`ulimit -n" in warning
    assert resources.fit_parallel(8, fds_each=6, threads_each=3, what="exec") == (8, None)


def test_fit_parallel_refuses_when_not_even_one_fits(soft_limit: Callable[[int], None]) -> None:
    soft_limit(resources.RESERVE_FDS)
    with pytest.raises(DoesNotFit, match=r"with 1 at a time needs about \d+ file descriptors"):
        resources.fit_parallel(4, fds_each=6, threads_each=3, what="exec on 4 hosts")


def test_a_real_emfile_is_a_shortage_of_descriptors(soft_limit: Callable[[int], None]) -> None:
    soft_limit(4)
    held: list[socket.socket] = []
    try:
        with pytest.raises(OSError) as caught:
            for _ in range(10):
                held.append(socket.socket())
    finally:
        for s in held:
            s.close()
    assert caught.value.errno == errno.EMFILE
    assert resources.exhaustion(caught.value) == (
        "file descriptors (EMFILE: this process's `ulimit -n`)"
    )


@pytest.mark.parametrize(
    ("exc", "what"),
    [
        (OSError(errno.ENFILE, "Too many open files in system"), "file descriptors (ENFILE"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), "memory (ENOMEM)"),
        (OSError(errno.ENOBUFS, "No buffer space available"), "socket buffers"),
        (RuntimeError("can't start new thread"), "threads"),
        (MemoryError(), "memory (MemoryError)"),
        (ResourceExhausted("threads (x)", "dialling h1"), "threads (x)"),
    ],
)
def test_shortages_are_recognised(exc: BaseException, what: str) -> None:
    found = resources.exhaustion(exc)
    assert found is not None and found.startswith(what)


def test_a_shortage_behind_another_error_is_found() -> None:
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as inner:
            raise HostUnreachable("h1", "cannot connect") from inner
    except HostUnreachable as outer:
        assert resources.exhaustion(outer) is not None


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError("timed out"),
        OSError(errno.EACCES, "Permission denied"),
        RuntimeError("something else"),
        HostUnreachable("h1", "cannot connect"),
    ],
)
def test_host_faults_are_not_shortages(exc: BaseException) -> None:
    assert resources.exhaustion(exc) is None
    assert resources.resource_error(exc, "dialling h1") is None


def test_resource_error_says_what_ran_out_and_while_doing_what() -> None:
    err = resources.resource_error(OSError(errno.EMFILE, "x"), "connecting to h1")
    assert isinstance(err, ResourceExhausted)
    assert str(err).startswith("meshrun ran out of file descriptors (EMFILE")
    assert "while connecting to h1" in str(err)
    assert "ulimit -n" in str(err) and "--parallel" in str(err)
    assert not isinstance(err, HostUnreachable)  # never a host's fault
