"""parallel-ssh (``pssh``), the workloads of bench/fanout and bench/dispatch.

    python parallel_ssh.py MODE SPEC_JSON

SPEC_JSON: ``address``, ``user``, ``key``, ``ports`` (one host each), and for the task
modes ``tasks`` (N) and ``per_host`` (sessions per host). Modes:

- ``true``: ``true`` on every host through one ParallelSSHClient (bench/fanout);
- ``rounds``: N ``echo i`` over ``per_host`` sessions per host, in rounds of as many
  commands as sessions (a round waits for its slowest command);
- ``pool``: N ``echo i``, a greenlet per session, each taking the next command: no
  round barrier (bench/dispatch's target competitor).

parallel-ssh does NOT check host keys. Exit status 0 only if every command exited 0
(and, for the tasks, printed its number). Only the task modes set TCP_NODELAY (meshrun
does by itself), as they always did; ``true`` measures parallel-ssh as it comes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: How every task-mode session connects: the fleet's key only, one retry, 30 s timeout.
SESSION = {"allow_agent": False, "identity_auth": False, "num_retries": 1, "timeout": 30}


def run_true(spec: dict[str, Any]) -> None:
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig

    ports = spec["ports"]
    client = ParallelSSHClient(
        [spec["address"]] * len(ports),
        user=spec["user"],
        pkey=spec["key"],
        host_config=[HostConfig(port=p, user=spec["user"], private_key=spec["key"]) for p in ports],
        pool_size=max(10, len(ports)),
        allow_agent=False,
        num_retries=1,
        timeout=30,
    )
    output = client.run_command("true", stop_on_errors=True)
    client.join(output)
    bad = [(o.host, o.exit_code, o.exception) for o in output if o.exit_code != 0]
    if bad:
        sys.exit(f"parallel-ssh: {len(bad)} host(s) failed: {bad[:5]}")


def set_nodelay() -> None:
    """Every pssh session's socket gets TCP_NODELAY, as meshrun's and Fabric's do."""
    import socket

    from pssh.clients.base import single

    connect_socket = single.BaseSSHClient._connect_socket

    def nodelay(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = connect_socket(self, *args, **kwargs)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return out

    single.BaseSSHClient._connect_socket = nodelay


def run_rounds(spec: dict[str, Any]) -> None:
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig

    set_nodelay()
    # Host-major interleaving, so the last, partial round still covers every host.
    ports = [p for _ in range(spec["per_host"]) for p in spec["ports"]]
    hosts = [spec["address"]] * len(ports)
    user, key = spec["user"], spec["key"]
    config = [HostConfig(port=p, user=user, private_key=key, **SESSION) for p in ports]
    client = ParallelSSHClient(hosts, host_config=config, pool_size=len(ports), **SESSION)
    commands = [f"echo {i}" for i in range(spec["tasks"])]
    bad, done = [], 0
    for start in range(0, len(commands), len(ports)):
        chunk = commands[start : start + len(ports)]
        if len(chunk) < len(ports):  # host_args must match the host list: shrink it
            client.hosts = hosts[: len(chunk)]
            client.host_config = config[: len(chunk)]
        output = client.run_command("%s", host_args=chunk, stop_on_errors=True)
        outs = {}
        for o, command in zip(output, chunk, strict=False):
            outs[command] = list(o.stdout)  # read to EOF, else exit_code can still be None
        client.join(output)
        for o, command in zip(output, chunk, strict=False):
            done += 1
            if o.exit_code != 0 or outs[command] != [command[5:]]:
                bad.append((command, o.exit_code, outs[command], o.exception))
    if bad or done != len(commands):
        sys.exit(f"parallel-ssh: {len(bad)} failed, {done} done: {bad[:5]}")


def run_pool(spec: dict[str, Any]) -> None:
    from gevent import joinall, spawn
    from pssh.clients import SSHClient

    set_nodelay()
    todo = iter(range(spec["tasks"]))
    bad: list[tuple[int, int | None, list[str]]] = []
    done: list[int] = []

    def worker(port: int) -> None:
        # One libssh2 session cannot run channels from several greenlets at once
        # (SSH2Error), so each greenlet has its own session, as ParallelSSHClient does.
        client = SSHClient(
            spec["address"], user=spec["user"], port=port, pkey=spec["key"], **SESSION
        )
        for i in todo:
            out = client.run_command(f"echo {i}")
            lines = list(out.stdout)
            client.wait_finished(out)
            done.append(i)
            if out.exit_code != 0 or lines != [str(i)]:
                bad.append((i, out.exit_code, lines))
        client.disconnect()

    joinall(
        [spawn(worker, p) for _ in range(spec["per_host"]) for p in spec["ports"]],
        raise_error=True,
    )
    if bad or len(done) != spec["tasks"]:
        sys.exit(f"parallel-ssh: {len(bad)} failed, {len(done)} done: {bad[:5]}")


MODES = {"true": run_true, "rounds": run_rounds, "pool": run_pool}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
