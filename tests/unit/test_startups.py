"""Dials that sshd drops under MaxStartups: which are retried, how, and the gate that
keeps a fan-out through one bastion under its limit."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace

import pytest

from meshrun.errors import AuthError, HostUnreachable
from meshrun.transport import startups
from meshrun.transport.startups import (
    HandshakeGate,
    dial_with_retries,
    dropped_early,
    gateway_of,
)


def chained(host: str, *causes: BaseException) -> HostUnreachable:
    """HostUnreachable(host) raised from causes[0], itself from causes[1], ... as the
    SSH connector raises them."""
    inner: BaseException | None = None
    for cause in reversed(causes):
        cause.__cause__ = inner
        inner = cause
    err = HostUnreachable(host, "accepted TCP but sent no SSH banner within 10s")
    err.__cause__ = inner
    return err


def banner_eof(host: str = "h1") -> HostUnreachable:
    """What sshd's MaxStartups drop looks like: EOF while reading the banner."""
    return chained(host, Exception("Error reading SSH protocol banner"), EOFError())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(banner_eof(), True, id="eof-reading-banner"),
        pytest.param(chained("h1", ConnectionResetError(104, "reset")), True, id="reset"),
        pytest.param(chained("h1", Exception("Exceeded MaxStartups")), True, id="said-so"),
        pytest.param(chained("h1", ConnectionRefusedError(111, "refused")), False, id="down"),
        pytest.param(
            chained("h1", Exception("Error reading SSH protocol banner"), TimeoutError()),
            False,
            id="hung",
        ),
        pytest.param(HostUnreachable("h1", "accepted TCP but no banner"), False, id="no-cause"),
        pytest.param(
            chained("h1", Exception("Host key verification failed."), EOFError()),
            False,
            id="proxycommand-refused-the-bastion",
        ),
    ],
)
def test_what_counts_as_dropped_early(error: BaseException, expected: bool) -> None:
    assert dropped_early(error) is expected


def test_a_dropped_dial_is_tried_again_with_growing_jittered_pauses() -> None:
    outcomes: list[BaseException | str] = [banner_eof(), banner_eof(), "connected"]
    pauses: list[float] = []

    def dial() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    got = dial_with_retries(dial, host="h1", early_s=5, rng=random.Random(7), sleep=pauses.append)
    assert got == "connected" and len(pauses) == 2
    first = startups.FIRST_RETRY_S
    assert first * 0.5 <= pauses[0] <= first * 1.5
    assert 2 * first * 0.5 <= pauses[1] <= 2 * first * 1.5


def test_a_host_that_keeps_dropping_is_unreachable_and_the_error_says_why() -> None:
    calls: list[int] = []

    def dial() -> str:
        calls.append(1)
        raise banner_eof()

    with pytest.raises(HostUnreachable, match="MaxStartups") as info:
        dial_with_retries(dial, host="h1", early_s=5, sleep=lambda s: None)
    assert len(calls) == startups.DIAL_ATTEMPTS
    assert info.value.host == "h1" and "bastion" in (info.value.fix or "")
    # ...and a host behind it (a jump host's error, re-addressed) is not retried again.
    behind = HostUnreachable("h2", "jump host j: gave up")
    behind.__cause__ = info.value
    assert not dropped_early(behind)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(AuthError("h1", "refused every key"), id="auth"),
        pytest.param(banner_eof("jump j"), id="another-hosts-drop"),
        pytest.param(chained("h1", ConnectionRefusedError(111, "refused")), id="down"),
    ],
)
def test_other_failures_are_not_retried(error: Exception) -> None:
    calls: list[int] = []

    def dial() -> str:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        dial_with_retries(dial, host="h1", early_s=5, sleep=lambda s: None)
    assert calls == [1]


def test_a_slow_failure_or_a_closing_connector_is_not_retried() -> None:
    def slow() -> str:
        time.sleep(0.02)
        raise banner_eof()

    with pytest.raises(HostUnreachable, match="no SSH banner"):
        dial_with_retries(slow, host="h1", early_s=0.01, sleep=lambda s: None)

    def fast() -> str:
        raise banner_eof()

    with pytest.raises(HostUnreachable, match="no SSH banner"):
        dial_with_retries(fast, host="h1", early_s=5, closing=lambda: True)


def test_the_gate_bounds_dials_per_gateway_and_not_across_them() -> None:
    gate = HandshakeGate(3)
    lock = threading.Lock()
    inside: dict[str | None, int] = {}
    most: dict[str | None, int] = {}

    def dial(gateway: str | None) -> None:
        with gate.through(gateway):
            with lock:
                inside[gateway] = inside.get(gateway, 0) + 1
                most[gateway] = max(most.get(gateway, 0), inside[gateway])
            time.sleep(0.01)
            with lock:
                inside[gateway] -= 1

    threads = [
        threading.Thread(target=dial, args=(g,))
        for g in ["ProxyJump bastion"] * 12 + ["ProxyJump other"] * 6 + [None] * 6
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most["ProxyJump bastion"] == 3 and most["ProxyJump other"] == 3
    assert most[None] > 3, "direct dials are not gated here"


def test_the_gate_is_reentrant_for_a_nested_dial_through_the_same_gateway() -> None:
    gate = HandshakeGate(1)
    with gate.through("ProxyJump a"), gate.through("ProxyJump a"):
        pass
    ran = threading.Event()

    def other() -> None:
        with gate.through("ProxyJump a"):
            ran.set()

    t = threading.Thread(target=other)
    t.start()
    assert ran.wait(5), "the gate must be free again after the nested use"
    t.join()


def test_gateway_of_names_the_chain_or_the_command() -> None:
    assert gateway_of(SimpleNamespace(proxy_jump=("a", "b"), proxy_command=None)) == (
        "ProxyJump a,b"
    )
    assert gateway_of(SimpleNamespace(proxy_jump="root@bastion:22")) == (
        "ProxyJump root@bastion:22"
    )
    command = "ssh -W %h:%p bastion"
    assert gateway_of(SimpleNamespace(proxy_jump=(), proxy_command=command)) == (
        f"ProxyCommand {command}"
    )
    assert gateway_of(SimpleNamespace(proxy_jump=(), proxy_command=None)) is None
