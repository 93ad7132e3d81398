"""Where does ``meshrun exec --hosts HOSTS -q -- true`` spend its wall clock?

Runs the real CLI entry point (``meshrun.cli.app.main``) in a child process, with timers
wrapped around meshrun's own functions from the outside (no meshrun code is changed),
and splits the parent-observed wall clock of the whole process into phases:

    startup   spawn -> first line of the child script (interpreter + site)
    import    import meshrun.cli.app (typer, pydantic via typer, meshrun modules)
    cli       typer builds the command and parses argv, up to meshrun.cli.app._fleet
    inventory resolve_hosts (TOML)
    connector default_connector: import paramiko (+ invoke, cryptography) and build it
    connect   run_fleet start -> last host authenticated (TCP, kex + host key, auth)
    command   last host authenticated -> run_fleet returned (channel, wrapper, exit status)
    close     connector.close() + console.finish
    exit      last timestamp -> process gone (interpreter shutdown)

plus per-host medians of TCP connect, handshake, auth and the command, and the
process CPU time (user+sys, all threads) at each phase boundary.

Experiments (counterfactual, done by patching from outside, to size a suggestion):

    --no-wrapper       send the bare command instead of meshrun's kill-on-EOF wrapper
    --handshakes N     allow N concurrent handshakes instead of the connector's 32
    --bytecode env     keep the environment's PYTHONDONTWRITEBYTECODE (default: cache .pyc
                       in a private temp dir, as bench/fanout does)
    --quickack         set TCP_QUICKACK after every read on the SSH socket (Linux), so the
                       sshd's Nagle-delayed channel confirmation is not held ~40 ms by our
                       delayed ACK
    --gc-freeze        gc.freeze() once the run is over, before interpreter shutdown
    --lean-cli         argparse + the library calls of `meshrun exec` instead of typer
    --compare-fabric   also time the Fabric ThreadingGroup run of bench/fanout
                       (competitors/fabric_client.py true), in the same repetitions, as
                       the reference to beat

    bench/breakdown.py --hosts 8,64 --repeat 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

PHASES = ["startup", "import", "cli", "inventory", "connector", "connect", "command", "close"]


# -- child: the instrumented meshrun run --------------------------------------------------


def child(hosts_toml: str, out: str, spawned: float, opts: argparse.Namespace) -> None:
    import threading

    from probes import Probe, patch

    t_ready = time.time()
    probe = Probe({"spawned": spawned}, {})
    probe.mark("ready", at=t_ready)
    mark = probe.mark

    if opts.lean_cli:
        import meshrun
    else:
        import meshrun.cli.app
    mark("imported")
    import meshrun

    if not opts.lean_cli:
        probe.around(meshrun.cli.app, "_fleet", before=lambda *a, **kw: mark("parsed"))
    probe.around(meshrun, "resolve_hosts", after=lambda *a, **kw: mark("inventory"))

    real_default = meshrun.default_connector

    def default_connector(*a: Any, **kw: Any) -> Any:
        connector: Any = real_default(*a, **kw)
        import meshrun.transport.ssh as ssh

        # Experiments first, so that the timers below wrap them.
        if opts.handshakes:
            connector._handshakes = threading.BoundedSemaphore(opts.handshakes)
        if opts.no_wrapper:
            patch(ssh, "build_wrapper", lambda real: lambda command, **kw: command)
            patch(ssh, "remote_exec_line", lambda real: lambda script: script)
        if opts.quickack:

            def quickack(real: Any) -> Any:
                def tcp(self: Any, host: Any, ep: Any) -> Any:
                    sock = real(self, host, ep)
                    quick = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
                    quick.settimeout(self.connect_timeout_s)
                    return quick

                return tcp

            patch(ssh.SSHConnector, "_tcp", quickack)
        on_host = lambda a: a[1].name  # noqa: E731
        on_conn = lambda a: a[0].host.name  # noqa: E731
        probe.span("tcp", ssh.SSHConnector, "_tcp", on_host)
        probe.span("handshake", ssh.SSHConnector, "_handshake", on_host)
        probe.span("auth", ssh.SSHConnector, "_authenticate", on_host)
        probe.span("channel", ssh.SSHConnection, "_open_on", on_conn)
        probe.span("command", ssh.SSHConnection, "_pump", on_conn)
        probe.around(connector, "close", before=lambda *a, **kw: mark("run_done"))
        mark("connector")
        return connector

    meshrun.default_connector = default_connector

    # The CLI runs ``exec`` through run_fleet_recorded (which calls run_fleet), --lean-cli
    # calls run_fleet itself: the run starts at whichever comes first.
    for name in ("run_fleet_recorded", "run_fleet"):
        probe.around(meshrun, name, before=lambda *a, **kw: mark("run_start", first=True))

    argv = ["exec", "--hosts", hosts_toml, "-q", "--", "true"]
    code: Any = 0
    if opts.lean_cli:
        code = lean_exec(argv, mark)
    else:
        sys.argv = ["meshrun", *argv]
        try:
            meshrun.cli.app.main()
        except SystemExit as exc:
            code = exc.code
    mark("end")
    record = {"code": code, "marks": probe.marks, "cpu": probe.cpus, "spans": probe.spans}
    Path(out).write_text(json.dumps(record))
    if opts.gc_freeze:
        import gc

        gc.freeze()  # shutdown then skips scanning every object the imports created
    sys.exit(code)


class QuickAckSocket(socket.socket):
    """A socket that re-arms TCP_QUICKACK after every read (Linux clears it by itself)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def lean_exec(argv: list[str], mark: Any) -> int:
    """What `meshrun exec --hosts H -q -- CMD` does, with argparse instead of typer."""
    import logging

    import meshrun
    from meshrun.cli.console import FleetConsole, OutputMode

    ap = argparse.ArgumentParser(prog="meshrun")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec")
    ex.add_argument("--hosts", "-H")
    ex.add_argument("--quiet", "-q", action="store_true")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ns = ap.parse_args(argv)
    words = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    mark("parsed")
    logging.basicConfig(level=logging.ERROR, format="meshrun: %(levelname)s: %(message)s")
    hosts = meshrun.resolve_hosts(ns.hosts)
    job = meshrun.FleetJob(command=meshrun.shell_command(words))
    connector = meshrun.default_connector(hosts, connect_timeout_s=10.0)
    screen = FleetConsole(
        mode=OutputMode.STREAM, host_names=[h.name for h in hosts], quiet=ns.quiet
    )
    try:
        report = meshrun.run_fleet(
            hosts, job, connector, run_id=meshrun.new_run_id(), observer=screen
        )
    finally:
        connector.close()
    screen.finish(report)
    return report.exit_code


# -- parent: fleets, repetitions, aggregation ---------------------------------------------


EXPERIMENTS = ("no_wrapper", "quickack", "gc_freeze", "lean_cli")


def child_flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--{name.replace('_', '-')}" for name in EXPERIMENTS if getattr(args, name)]
    if args.handshakes:
        flags += ["--handshakes", str(args.handshakes)]
    return flags


def one_run(hosts_toml: Path, out: Path, flags: list[str], env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", str(hosts_toml), str(out), *flags]
    spawned = time.time()
    proc = subprocess.run(
        [*argv, "--spawned", repr(spawned)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    exited = time.time()
    if proc.returncode != 0:
        sys.exit(f"breakdown: meshrun run failed ({proc.returncode}):\n{proc.stderr.decode()}")
    data: dict[str, Any] = json.loads(out.read_text())
    m = data["marks"]
    connected = max(e for kind, _, _, e in data["spans"] if kind == "auth")
    phases = {
        "startup": m["ready"] - m["spawned"],
        "import": m["imported"] - m["ready"],
        "cli": m["parsed"] - m["imported"],
        "inventory": m["inventory"] - m["parsed"],
        "connector": m["connector"] - m["inventory"],
        "connect": connected - m["run_start"],
        "command": m["run_done"] - connected,
        "close": m["end"] - m["run_done"],
        "exit": exited - m["end"],
        "total": exited - spawned,
    }
    per_host: dict[str, list[float]] = {}
    for kind, _, s, e in data["spans"]:
        per_host.setdefault(kind, []).append(e - s)
    c = data["cpu"]
    cpu = {
        "to_imported": c["imported"],
        "to_connector": c["connector"],
        "run": c["run_done"] - c["run_start"],
        "total": c["end"],
    }
    return {"phases": phases, "per_host": per_host, "cpu": cpu}


def fabric_run(script: Path, spec: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(script), "true", spec],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        check=True,
    )
    return time.perf_counter() - start


def report(count: int, label: str, runs: list[dict[str, Any]], fabric: list[float]) -> str:
    lines = [f"\n== meshrun exec, {count} hosts{label}: {len(runs)} runs, medians (ms) =="]
    total = median([r["phases"]["total"] for r in runs])
    for p in [*PHASES, "exit"]:
        v = median([r["phases"][p] for r in runs])
        lines.append(f"  {p:<10} {v * 1000:8.1f}  {100 * v / total:5.1f}%")
    lines.append(
        f"  {'total':<10} {total * 1000:8.1f}   (phases are medians: they need not add up)"
    )
    if fabric:
        lines.append(
            f"  fabric ThreadingGroup, same repetitions: {median(fabric) * 1000:.1f} "
            f"(meshrun/fabric = {total / median(fabric):.2f})"
        )
    lines.append("  per host (median of all hosts and runs; max in brackets):")
    for kind in ("tcp", "handshake", "auth", "channel", "command"):
        xs = [x for r in runs for x in r["per_host"].get(kind, [])]
        if xs:
            lines.append(f"    {kind:<10} {median(xs) * 1000:7.1f}  [{max(xs) * 1000:7.1f}]")
    cpu = {k: median([r["cpu"][k] for r in runs]) for k in runs[0]["cpu"]}
    lines.append(
        "  client CPU (user+sys, all threads): "
        f"to imports {cpu['to_imported'] * 1000:.0f} ms, "
        f"to connector {cpu['to_connector'] * 1000:.0f} ms, "
        f"run_fleet {cpu['run'] * 1000:.0f} ms, total {cpu['total'] * 1000:.0f} ms"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/breakdown.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    ap.add_argument("--hosts", default="8,64", help="fleet sizes (8,64)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-wrapper", action="store_true")
    ap.add_argument("--handshakes", type=int, default=0)
    ap.add_argument("--quickack", action="store_true")
    ap.add_argument("--gc-freeze", action="store_true")
    ap.add_argument("--lean-cli", action="store_true")
    ap.add_argument("--compare-fabric", action="store_true")
    ap.add_argument("--bytecode", choices=["cache", "env"], default="cache")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("HOSTS_TOML", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        hosts_toml, out = args.child
        child(hosts_toml, out, args.spawned, args)
        return 0

    from harness import fleet_spec, run_benchmark, running_fleet, tool_env

    label = f", bytecode {args.bytecode}"
    flags = child_flags(args)
    if flags:
        label += f", experiment: {' '.join(flags)}"
    doc: dict[str, Any] = {"label": label, "sizes": {}}

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="meshrun-breakdown-") as tmp:
            env = tool_env(Path(tmp) / "pycache" if args.bytecode == "cache" else None)
            fabric_py = Path(__file__).resolve().parent / "competitors" / "fabric_client.py"
            for count in [int(x) for x in args.hosts.split(",")]:
                runs: list[dict[str, Any]] = []
                fabric: list[float] = []
                with running_fleet(count, Path(tmp) / f"fleet{count}") as fleet:
                    spec = fleet_spec(fleet)
                    out = Path(tmp) / "child.json"
                    for i in range(args.warmup + args.repeat):
                        r = one_run(fleet.hosts_toml, out, flags, env)
                        f = fabric_run(fabric_py, spec, env) if args.compare_fabric else None
                        if i >= args.warmup:
                            runs.append(r)
                            if f is not None:
                                fabric.append(f)
                print(report(count, label, runs, fabric), flush=True)
                doc["sizes"][count] = {"meshrun": runs, "fabric_s": fabric}
        return 0

    return run_benchmark("breakdown", body, doc, args.json)


if __name__ == "__main__":
    sys.exit(main())
