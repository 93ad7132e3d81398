"""Fabric, the workloads of bench/fanout, bench/dispatch and bench/schedule.

    python fabric_client.py MODE SPEC_JSON

SPEC_JSON: ``address``, ``user``, ``key``, ``known_hosts``, ``ports`` (one host each),
and what the mode needs. Modes:

- ``true``: ``true`` on every host through a ThreadingGroup (bench/fanout, and
  bench/breakdown's ``--compare-fabric``);
- ``meshrun-true``: the same script with ``meshrun.fabric.Group`` in place of
  ThreadingGroup, the one line a Fabric user changes (bench/fanout's Group row);
- ``steps`` / ``meshrun-steps``: a deploy script's shape on one group (ThreadingGroup /
  ``meshrun.fabric.Group``, again only the import differs) over the connections it
  keeps: 8 ``run`` steps (stage a config file, test, cat, sha256sum, a few KB of
  echo, uname, a shell loop, true) and a ``get``, every result checked
  (bench/fanout's ``fabric-steps`` / ``fabric-group-steps`` rows); needs ``workdir``,
  a local directory the hosts can read (the fleet's hosts share this machine);
- ``tasks``: ``tasks`` (N) ``echo i``, one Connection per host opened in parallel,
  ``per_host`` threads per host taking the next command (bench/dispatch);
- ``rr`` / ``fifo``: the ``commands`` given, ``slots`` threads per host, each host
  working through its own round-robin bin, or every thread taking the next command of
  one queue (bench/schedule).

Host keys are checked against known_hosts like OpenSSH does (Fabric's default adds
unknown keys). Exit status 0 only if every command exited 0. ``connection`` and
``open_nodelay`` are also what bench/pull uses in process.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from typing import Any

import paramiko
from fabric import Connection


def connection(address: str, user: str, port: int, key: str, known_hosts: str) -> Connection:
    """A Connection (not opened) that rejects a host key missing from ``known_hosts``."""
    c = Connection(
        address,
        user=user,
        port=port,
        connect_timeout=30,
        connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False},
    )
    # Fabric auto-adds unknown keys by default; check them like OpenSSH would instead.
    c.client.load_host_keys(known_hosts)
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c


def open_nodelay(c: Connection) -> None:
    """Open ``c`` with TCP_NODELAY on its socket, as meshrun's own connections have."""
    c.open()
    c.client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connections(spec: dict[str, Any]) -> list[Connection]:
    return [
        connection(spec["address"], spec["user"], port, spec["key"], spec["known_hosts"])
        for port in spec["ports"]
    ]


def in_threads(target: Any, args: list[tuple[Any, ...]]) -> None:
    """``target(*a)`` for every ``a`` of ``args``, each in its own thread; wait for all."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_true(spec: dict[str, Any], meshrun: bool = False) -> None:
    from fabric.exceptions import GroupException

    if meshrun:  # the one line a Fabric user changes
        from meshrun.fabric import Group
    else:
        from fabric import ThreadingGroup as Group

    group = Group.from_connections(connections(spec))
    try:
        results = group.run("true", hide=True, in_stream=False)
    except GroupException as exc:
        bad = {str(c.port): repr(r) for c, r in exc.result.items() if not getattr(r, "ok", False)}
        sys.exit(f"fabric: {len(bad)} host(s) failed: {list(bad.items())[:5]}")
    finally:
        group.close()
    bad_codes = [r.exited for r in results.values() if r.exited != 0]
    # Results are keyed by Connection, which is (host, user, port): bench/scale's alias
    # entries (one sshd listed again) share a key, so count distinct connections.
    if bad_codes or len(results) != len(set(group)):
        sys.exit(f"fabric: bad results: {bad_codes}")


#: The ``echo`` step's text: a few KB of output, as a step that prints a config would.
ECHO_TEXT = " ".join(f"line{i:04d}" for i in range(400))  # 3,999 characters
#: The deployed file: a small config file.
CONFIG_TEXT = "".join(f"key{i} = value{i}\n" for i in range(40))
#: The ``sh -c`` step's loop and what it prints.
LOOP = "sh -c 'for i in 1 2 3 4 5 6; do echo step $i; done'"
LOOP_OUT = "".join(f"step {i}\n" for i in range(1, 7))


def run_steps(spec: dict[str, Any], meshrun: bool = False) -> None:
    """A deploy script's shape: 8 run steps and a get on one group; every result checked.

    The fleet's hosts are one machine and one login directory, so a ``put`` to one path
    from every host would write one file 64 times at once: Fabric's in-place write then
    fails its own size check (another host truncated the file). The file is staged by
    the first step instead (into each host's own ``$HOME``, which the fleet sets per
    host), and ``get`` reads one shared file, which is safe.
    """
    import base64
    import hashlib
    import os

    from fabric.exceptions import GroupException

    if meshrun:  # the one line a Fabric user changes
        from meshrun.fabric import Group
    else:
        from fabric import ThreadingGroup as Group

    work = spec["workdir"]
    shared = os.path.join(work, "shared.conf")
    with open(shared, "w") as f:
        f.write(CONFIG_TEXT)
    digest = hashlib.sha256(CONFIG_TEXT.encode()).hexdigest()
    payload = base64.b64encode(CONFIG_TEXT.encode()).decode()
    release = '"$HOME/releases/r42"'  # $HOME differs per host (the fleet sets it)
    conf = '"$HOME/releases/r42/app.conf"'
    steps = [  # command, check of each host's stdout
        (f"mkdir -p {release} && echo {payload} | base64 -d > {conf}", lambda out: out == ""),
        (f"test -f {conf} && test -s {conf}", lambda out: out == ""),
        (f"cat {conf}", lambda out: out == CONFIG_TEXT),
        (f"sha256sum {conf}", lambda out: out.split()[0] == digest),
        (f"echo {ECHO_TEXT}", lambda out: out == ECHO_TEXT + "\n"),
        ("uname -a", lambda out: out.startswith(os.uname().sysname)),
        (LOOP, lambda out: out == LOOP_OUT),
        ("true", lambda out: out == ""),
    ]
    group = Group.from_connections(connections(spec))
    hosts = len(set(group))
    try:
        for command, check in steps:
            results = group.run(command, hide=True, in_stream=False)
            bad = [
                (c.port, r.exited, r.stdout[:80])
                for c, r in results.items()
                if r.exited != 0 or not check(r.stdout)
            ]
            if bad or len(results) != hosts:
                sys.exit(f"fabric steps: {command[:40]!r}: {len(results)} results, bad {bad[:3]}")
        got = group.get(shared, os.path.join(work, "got", "{port}", ""))
        if len(got) != hosts:
            sys.exit(f"fabric steps: get: {len(got)} results for {hosts} hosts")
        for c, r in got.items():
            with open(r.local) as f:
                if f.read() != CONFIG_TEXT:
                    sys.exit(f"fabric steps: get from {c.port}: wrong content in {r.local}")
            os.unlink(r.local)  # the next run must fetch it again
    except GroupException as exc:
        bad = {str(c.port): repr(r) for c, r in exc.result.items() if not getattr(r, "ok", False)}
        sys.exit(f"fabric steps: {len(bad)} host(s) failed: {list(bad.items())[:5]}")
    finally:
        group.close()


def run_tasks(spec: dict[str, Any]) -> None:
    hosts = connections(spec)
    in_threads(open_nodelay, [(c,) for c in hosts])
    if not all(c.is_connected for c in hosts):
        sys.exit("fabric: a connection failed")
    todo = iter(range(spec["tasks"]))
    lock = threading.Lock()
    bad: list[tuple[int, str]] = []
    done: list[int] = []

    def worker(c: Connection) -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                r = c.run(f"echo {i}", hide=True, in_stream=False, warn=True)
                ok = r.exited == 0 and r.stdout == f"{i}\n"
            except Exception as exc:
                ok, r = False, exc
            with lock:
                done.append(i)
                if not ok:
                    bad.append((i, repr(r)[:200]))

    in_threads(worker, [(c,) for _ in range(spec["per_host"]) for c in hosts])
    for c in hosts:
        c.close()
    if bad or len(done) != spec["tasks"]:
        sys.exit(f"fabric: {len(bad)} failed, {len(done)} done: {bad[:5]}")


def run_policy(spec: dict[str, Any], policy: str) -> None:
    hosts = connections(spec)
    in_threads(open_nodelay, [(c,) for c in hosts])
    commands = spec["commands"]
    if policy == "rr":  # task i -> host i mod N, each host works through its own bin in order
        queues = [list(commands[h :: len(hosts)]) for h in range(len(hosts))]
    else:  # fifo: one queue in file order, any free slot takes the next
        shared = list(commands)
        queues = [shared] * len(hosts)
    lock = threading.Lock()
    bad: list[tuple[str, int, str]] = []

    def worker(h: int) -> None:
        c, q = hosts[h], queues[h]
        while True:
            with lock:
                if not q:
                    return
                command = q.pop(0)
            r = c.run(command, hide=True, in_stream=False, warn=True)
            if r.exited != 0:
                with lock:
                    bad.append((command, r.exited, r.stderr[-200:]))

    in_threads(worker, [(h,) for _ in range(spec["slots"]) for h in range(len(hosts))])
    for c in hosts:
        c.close()
    if bad:
        sys.exit(f"fabric {policy}: {len(bad)} failed: {bad[:3]}")


MODES = {
    "true": run_true,
    "meshrun-true": lambda spec: run_true(spec, meshrun=True),
    "steps": run_steps,
    "meshrun-steps": lambda spec: run_steps(spec, meshrun=True),
    "tasks": run_tasks,
    "rr": lambda spec: run_policy(spec, "rr"),
    "fifo": lambda spec: run_policy(spec, "fifo"),
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
