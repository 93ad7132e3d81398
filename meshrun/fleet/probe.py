"""``meshrun hosts``: who is reachable, and what each host has (CPUs, load, python3).

At most ``parallel`` hosts are probed at once (fitted to this process's limits), and a
host's connection is closed as soon as it is probed, so descriptors and threads stay
bounded however many hosts there are. A probe that fails because *this process* ran
out of descriptors or threads is not the host's fault: it is tried again once the
others are done, fewer at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.errors import AuthError, ConnectError, HostKeyError, ResourceExhausted
from meshrun.records import record
from meshrun.transport.base import Connector

log = logging.getLogger(__name__)

#: Hosts probed at once when not told otherwise (``meshrun hosts -p``).
DEFAULT_PROBE_PARALLEL = 64

#: How many rounds a probe short of resources here gets (each with half the hosts at
#: once, the last one alone) before it is reported as such.
_SHORTAGE_ROUNDS = 4

#: One round trip that answers every question; each answer on its own tagged line.
PROBE_COMMAND = (
    "echo cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null); "
    "echo load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || "
    "uptime | sed 's/.*average[s]*: //; s/,//g'); "
    "if command -v python3 >/dev/null 2>&1; then echo python3=yes; else echo python3=no; fi"
)


@record
class HostProbe:
    name: str
    address: str | None
    reachable: bool
    auth_ok: bool
    rtt_ms: float | None = None  # one exec round trip on the open connection
    cpus: int | None = None
    load: tuple[float, float, float] | None = None
    python3: bool | None = None
    error: str | None = None
    #: Not probed: this process ran out of descriptors, threads or memory (``error``
    #: says which); says nothing about the host.
    shortage: bool = False


def parse_probe_output(text: str) -> tuple[int | None, tuple[float, float, float] | None, bool]:
    """The answers of PROBE_COMMAND; missing or garbled values become None."""
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    cpus: int | None
    try:
        cpus = int(values.get("cpus", "").strip())
    except ValueError:
        cpus = None
    load: tuple[float, float, float] | None
    try:
        a, b, c = (float(x) for x in values.get("load", "").split()[:3])
        load = (a, b, c)
    except ValueError:
        load = None
    return cpus, load, values.get("python3", "").strip() == "yes"


def probe_host(host: Host, connector: Connector, *, release: bool = True) -> HostProbe:
    """Probe one host, then close its connection (:meth:`Connector.release`) unless
    ``release`` is False (it stays pooled for the caller's next use)."""
    try:
        return _probe(host, connector)
    finally:
        if release:
            _release(host, connector)


def _release(host: Host, connector: Connector) -> None:
    try:
        connector.release(host)
    except Exception:
        log.exception("closing the connection to %s failed", host.name)


def _probe(host: Host, connector: Connector) -> HostProbe:
    try:
        conn = connector.connect(host)
        raw = conn.run_raw(PROBE_COMMAND, timeout_s=30)
        # Timed on a warm connection: the first channel also pays sshd's session setup.
        started = time.monotonic()
        conn.run_raw("true", timeout_s=30)
        rtt_ms = (time.monotonic() - started) * 1000
    except ResourceExhausted as exc:
        return HostProbe(host.name, host.address, False, False, error=str(exc), shortage=True)
    except (AuthError, HostKeyError) as exc:
        return HostProbe(host.name, host.address, True, False, error=str(exc))
    except ConnectError as exc:
        return HostProbe(host.name, host.address, False, False, error=str(exc))
    except Exception as exc:  # one host's surprise must not sink the whole table
        shortage = resources.resource_error(exc, f"probing {host.name}")
        if shortage is not None:
            error = str(shortage)
            return HostProbe(host.name, host.address, False, False, error=error, shortage=True)
        log.exception("probing %s failed", host.name)
        return HostProbe(host.name, host.address, False, False, error=f"internal error: {exc!r}")
    cpus, load, python3 = parse_probe_output(raw.stdout.decode("utf-8", "replace"))
    return HostProbe(host.name, host.address, True, True, rtt_ms, cpus, load, python3)


def probe_parallel(hosts: Sequence[Host], parallel: int | None = None) -> tuple[int, str | None]:
    """Hosts to probe at once: ``parallel`` (default :data:`DEFAULT_PROBE_PARALLEL`)
    fitted to this process's limits, and the warning line when that is fewer.
    DoesNotFit (exit 2) when not even one host at a time fits."""
    wanted = min(parallel or DEFAULT_PROBE_PARALLEL, max(1, len(hosts)))
    return resources.fit_parallel(
        wanted,
        fds_each=resources.EXEC_FDS_PER_HOST,
        threads_each=resources.EXEC_THREADS_PER_HOST,
        what=f"hosts on {len(hosts)} hosts",
        option="--parallel" if parallel else "--parallel (default)",
    )


def probe_hosts(
    hosts: Sequence[Host],
    connector: Connector,
    *,
    parallel: int | None = None,
    release: bool = True,
) -> list[HostProbe]:
    """Probe every host, ``parallel`` at once (fitted: :func:`probe_parallel`), results
    in inventory order. Probes short of resources here are tried again, fewer at once;
    one still short when alone keeps ``shortage`` set. Each host's connection is
    closed when it is probed, unless ``release`` is False."""
    from concurrent.futures import ThreadPoolExecutor  # `hosts` only: off exec's start

    width, too_many = probe_parallel(hosts, parallel)
    if too_many is not None:
        log.warning("%s", too_many)
    results: dict[int, HostProbe] = {}
    todo = list(range(len(hosts)))
    for round_ in range(_SHORTAGE_ROUNDS):
        if round_:
            width = 1 if round_ == _SHORTAGE_ROUNDS - 1 else max(1, width // 2)
            log.warning(
                "%d host%s not probed for want of resources here; trying again, %d at once",
                len(todo),
                "" if len(todo) == 1 else "s",
                width,
            )
        with ThreadPoolExecutor(max_workers=max(1, min(width, len(todo)))) as pool:
            done = list(pool.map(lambda i: probe_host(hosts[i], connector, release=release), todo))
        results.update(zip(todo, done, strict=True))
        todo = [i for i, probe in zip(todo, done, strict=True) if probe.shortage]
        if not todo:
            break
    return [results[i] for i in range(len(hosts))]
