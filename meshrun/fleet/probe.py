"""``meshrun hosts``: who is reachable, and what each host has (CPUs, load, python3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from meshrun.config.inventory import Host
from meshrun.errors import AuthError, ConnectError, HostKeyError
from meshrun.records import record
from meshrun.transport.base import Connector

log = logging.getLogger(__name__)

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


def probe_host(host: Host, connector: Connector) -> HostProbe:
    try:
        conn = connector.connect(host)
        raw = conn.run_raw(PROBE_COMMAND, timeout_s=30)
        # Timed on a warm connection: the first channel also pays sshd's session setup.
        started = time.monotonic()
        conn.run_raw("true", timeout_s=30)
        rtt_ms = (time.monotonic() - started) * 1000
    except (AuthError, HostKeyError) as exc:
        return HostProbe(host.name, host.address, True, False, error=str(exc))
    except ConnectError as exc:
        return HostProbe(host.name, host.address, False, False, error=str(exc))
    except Exception as exc:  # one host's surprise must not sink the whole table
        log.exception("probing %s failed", host.name)
        return HostProbe(host.name, host.address, False, False, error=f"internal error: {exc!r}")
    cpus, load, python3 = parse_probe_output(raw.stdout.decode("utf-8", "replace"))
    return HostProbe(host.name, host.address, True, True, rtt_ms, cpus, load, python3)


def probe_hosts(
    hosts: Sequence[Host], connector: Connector, *, parallel: int = 64
) -> list[HostProbe]:
    """Probe every host at once (bounded), results in inventory order."""
    from concurrent.futures import ThreadPoolExecutor  # `hosts` only: off exec's start

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        return list(pool.map(lambda h: probe_host(h, connector), hosts))
