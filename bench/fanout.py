"""Fan-out benchmark: ``true`` on every host of a loopback fleet, meshrun vs the others.

Every tool runs as a whole process and is timed by wall clock from spawn to exit, so
interpreter start-up, imports, handshakes, the command and teardown all count, as they
do for a user at a shell prompt. Within each repetition the tools run one after another
(round-robin, the starting tool rotating each repetition) so that machine noise is
spread over all of them instead of landing on one.

    bench/fanout --hosts 8,64 --repeat 7 --warmup 1 --json /tmp/fanout.json

Rows (the competitors are parallel-ssh, Fabric and both GNU parallel rows; the last three
rows are references, not competitors):

- meshrun exec --hosts HOSTS_TOML -q -- true      (checks host keys)
- parallel-ssh ParallelSSHClient script           (does NOT check host keys)
- Fabric ThreadingGroup script                    (checks host keys: RejectPolicy)
- the same script with meshrun.fabric.Group       (meshrun's engine; not a competitor:
                                                   compared with the row above, target 1.5x)
- a deploy-shaped Fabric script (8 runs, get) with ThreadingGroup and with
  meshrun.fabric.Group                            (the same comparison on a script that
                                                   keeps its connections across steps)
- GNU parallel --nonall -S ...                    (OpenSSH, checks host keys)
  - once with OpenSSH's default key exchange, once with curve25519-sha256, the kex
    paramiko negotiates, so the handshake CPU cost is the same as meshrun's
- meshrun --help, python3 -c pass                 (start-up cost and the floor)
- meshrun exec -q -- true without --hosts         (start-up + real CLI parse, runs locally:
                                                   --help skips the option parsing)

The fleet's sshd processes run on this machine too, so server-side work (fork, kex,
session shell) competes for the same CPUs as the client under test.

By default Python may cache bytecode in a private temp dir (--bytecode cache), as for any
pip-installed package, even if the environment sets PYTHONDONTWRITEBYTECODE=1;
--bytecode env measures the environment as it is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from competitors import gnu_parallel
from harness import (
    GIVE_UP_AFTER,
    Tool,
    ToolResult,
    add_bytecode_option,
    add_output_options,
    add_rounds_options,
    failure_notes,
    fleet_spec,
    fmt,
    keep_only,
    med,
    meshrun_executable,
    new_doc,
    run_benchmark,
    running_fleet,
    time_tools,
    tool_env,
)

from meshrun.testing.fleet import Fleet

HELP_TARGET_S = 0.3
COMPETITORS = harness.BENCH / "competitors"


def build_tools(fleet: Fleet, workdir: Path, python: str) -> list[Tool]:
    spec = fleet_spec(fleet)
    gnu = [gnu_parallel.executable(), "--nonall", "-j0", "--no-notice", "--sshloginfile"]
    x25519 = gnu_parallel.X25519
    default = gnu_parallel.write_sshlogins(fleet, workdir / "ssh.default", jobs=1)
    fast = gnu_parallel.write_sshlogins(fleet, workdir / "ssh.x25519", kex=x25519, jobs=1)
    pssh = [python, str(COMPETITORS / "parallel_ssh.py"), "true", spec]
    fabric = [python, str(COMPETITORS / "fabric_client.py"), "true", spec]
    group = [python, str(COMPETITORS / "fabric_client.py"), "meshrun-true", spec]
    steps_dir = workdir / "steps"
    steps_dir.mkdir(exist_ok=True)
    steps_spec = fleet_spec(fleet, workdir=str(steps_dir))
    fabric_steps = [python, str(COMPETITORS / "fabric_client.py"), "steps", steps_spec]
    group_steps = [python, str(COMPETITORS / "fabric_client.py"), "meshrun-steps", steps_spec]
    rivals = [  # key, label, argv, note
        ("pssh", "parallel-ssh", pssh, "host keys NOT checked"),
        ("fabric", "fabric ThreadingGroup", fabric, "host keys checked (RejectPolicy)"),
        ("parallel", "GNU parallel", [*gnu, str(default), "true"], "OpenSSH default kex"),
        (
            "parallel-x25519",
            "GNU parallel x25519",
            [*gnu, str(fast), "true"],
            f"KexAlgorithms={x25519}",
        ),
    ]
    meshrun = meshrun_executable()
    return [
        Tool(
            "meshrun",
            "meshrun exec",
            [meshrun, "exec", "--hosts", str(fleet.hosts_toml), "-q", "--", "true"],
            note="host keys checked",
        ),
        *(Tool(key, label, argv, competitor=True, note=note) for key, label, argv, note in rivals),
        Tool(
            "fabric-group",
            "meshrun.fabric.Group",
            group,
            note="fabric_client.py with meshrun.fabric.Group (host keys checked)",
        ),
        Tool(
            "fabric-steps",
            "fabric ThreadingGroup steps",
            fabric_steps,
            note="8 run steps + get on one group (host keys checked)",
        ),
        Tool(
            "fabric-group-steps",
            "meshrun.fabric.Group steps",
            group_steps,
            note="the steps script with meshrun.fabric.Group (host keys checked)",
        ),
        Tool("meshrun-help", "meshrun --help", [meshrun, "--help"], note="start-up"),
        Tool(
            "meshrun-local",
            "meshrun exec (local)",
            [meshrun, "exec", "-q", "--", "true"],
            note="no --hosts: start-up + CLI parse + local run, no SSH",
        ),
        Tool("python", "python3 -c pass", [python, "-c", "pass"], note="floor"),
    ]


# -- reporting --------------------------------------------------------------------------


def render(hosts: int, results: Sequence[ToolResult], repeat: int, bytecode: str = "") -> str:
    mesh = next(r for r in results if r.tool.key == "meshrun")
    base = mesh.median
    out = [
        f"\n== {hosts} hosts: `true` on every host, wall clock of the whole process, "
        f"{repeat} runs{', bytecode ' + bytecode if bytecode else ''} ==",
        f"{'tool':<24} {'median s':>9} {'min s':>8} {'ratio':>7} {'cpu s':>7} {'box s':>7}"
        f"  {'ok':>5}  note",
    ]
    for r in results:
        ratio = r.ratio_to(mesh)
        ok = f"{len(r.times_s)}/{repeat}"
        status = ""
        if r.failed:
            status = f"  FAILED {len(r.failures)} run(s)"
            if r.gave_up:
                status += f" (not run again after {GIVE_UP_AFTER} failures in a row)"
        out.append(
            f"{r.tool.label:<24} {fmt(r.median):>9} {fmt(r.minimum):>8} {fmt(ratio, '.2f'):>7} "
            f"{fmt(med(r.client_cpu_s), '.2f'):>7} {fmt(med(r.machine_cpu_s), '.2f'):>7}  {ok:>5}  "
            f"{r.tool.note}{status}"
        )
    out.append(
        "ratio = tool median / meshrun exec median (>1: meshrun is faster); cpu s = user+sys "
        "of the tool's process tree;\nbox s = busy CPU of the whole machine during the run "
        "(the tool + the fleet's sshd sessions + noise), medians"
    )
    rivals = [r for r in results if r.tool.competitor and r.median is not None]
    if mesh.failed or base is None:
        out.append("meshrun exec FAILED: no verdict")
    elif rivals:
        best = min(rivals, key=lambda r: r.median or 0.0)
        assert best.median is not None
        verdict = "YES" if base <= best.median else "NO"
        flaky = " (it failed some runs)" if best.failed else ""
        out.append(
            f"fastest competitor: {best.tool.label}{flaky} {best.median:.3f}s; "
            f"meshrun {base:.3f}s — meshrun at or below it: {verdict} "
            f"(meshrun/best = {base / best.median:.2f})"
        )
    out += group_verdict(results)
    helprow = next((r for r in results if r.tool.key == "meshrun-help"), None)
    if helprow is not None and helprow.median is not None:
        verdict = "ok" if helprow.median < HELP_TARGET_S else "OVER TARGET"
        out.append(
            f"meshrun --help median {helprow.median:.3f}s (target < {HELP_TARGET_S}s: {verdict})"
        )
    out += failure_notes(results)
    return "\n".join(out)


#: How much faster the same Fabric script must be with meshrun.fabric.Group (issue 14).
GROUP_TARGET = 1.5


#: (ThreadingGroup row, Group row, which script) compared by :func:`group_verdict`.
GROUP_PAIRS = (
    ("fabric", "fabric-group", "the `true` script"),
    ("fabric-steps", "fabric-group-steps", "the steps script (8 runs, get)"),
)


def group_verdict(results: Sequence[ToolResult]) -> list[str]:
    """Each Fabric script with meshrun.fabric.Group against itself with ThreadingGroup."""
    by_key = {r.tool.key: r for r in results}
    lines = []
    for fabric_key, group_key, script in GROUP_PAIRS:
        group, fabric = by_key.get(group_key), by_key.get(fabric_key)
        if group is None or fabric is None or group.median is None or fabric.median is None:
            continue
        ratio = fabric.median / group.median
        cpu = med(fabric.client_cpu_s), med(group.client_cpu_s)
        cpu_ratio = f"{cpu[0] / cpu[1]:.2f}" if cpu[0] and cpu[1] else "-"
        verdict = "met" if ratio >= GROUP_TARGET else "NOT met"
        lines.append(
            f"meshrun.fabric.Group vs fabric ThreadingGroup, {script}: {ratio:.2f}x by wall "
            f"clock (target {GROUP_TARGET}x: {verdict}), {cpu_ratio}x by the client's CPU"
        )
    return lines


def as_json(hosts: int, results: Sequence[ToolResult]) -> dict[str, Any]:
    mesh = next(r for r in results if r.tool.key == "meshrun")
    return {
        "hosts": hosts,
        "tools": {r.tool.key: r.as_json(ratio_to_meshrun=r.ratio_to(mesh)) for r in results},
    }


# -- main -------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("host counts must be >= 1")
    return sizes


SSH_CONFIG_CHOICES = ("none", "200", "200-all")


def write_ssh_config(path: Path, kind: str) -> Path | None:
    """A user's ssh_config of 200 ``Host`` blocks (other machines, as most people's is).

    ``200``: none of them is a fleet host, so meshrun's scan skips ``ssh -G``;
    ``200-all``: a ``Host *`` block also sets ServerAliveInterval (a common habit),
    which can change how every host is reached: ``ssh -G`` runs once per host.
    """
    if kind == "none":
        return None
    blocks = []
    for i in range(200):
        blocks.append(
            f"Host srv-{i:03d} srv-{i:03d}.corp\n  HostName 10.{i // 250}.{i % 250}.9\n"
            f"  User deploy\n  Port {2200 + i % 7}\n  IdentityFile ~/.ssh/corp_{i % 5}\n"
            + ("  ProxyJump bastion.corp\n" if i % 3 == 0 else "")
        )
    if kind == "200-all":
        blocks.append("Host *\n  ServerAliveInterval 60\n")
    path.write_text("\n".join(blocks))
    return path


def resolution_cost(fleet: Fleet, config: Path | None, repeat: int = 5) -> str:
    """meshrun's ssh_config resolution for the fleet, in process: the per-host cost."""
    from meshrun.config.inventory import load_inventory
    from meshrun.transport.ssh import SSHConnector

    hosts = load_inventory(fleet.hosts_toml)
    times = []
    connector = None
    for _ in range(repeat):
        started = time.perf_counter()
        connector = SSHConnector(ssh_config_path=str(config) if config else "/nonexistent")
        connector.prepare(hosts)
        times.append(time.perf_counter() - started)
        connector.close()
    assert connector is not None
    scan = connector._resolver.scan
    asked = sum(1 for h in hosts if scan.may_change(h.ssh_alias, frozenset()))
    median = statistics.median(times)
    return (
        f"ssh_config resolution ({'no config' if config is None else config.name}): "
        f"{median * 1000:.1f} ms for {len(hosts)} hosts = {median * 1000 / len(hosts):.2f} "
        f"ms/host (median of {repeat}; ssh -G asked for {asked} of {len(hosts)} hosts)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=parse_sizes, default=[8, 64], help="fleet sizes (8,64)")
    add_rounds_options(parser)
    add_output_options(
        parser,
        "comma-separated tool keys to run besides meshrun (pssh, fabric, fabric-group, "
        "fabric-steps, fabric-group-steps, parallel, parallel-x25519, meshrun-help, "
        "meshrun-local, python; default: all)",
    )
    parser.add_argument(
        "--ssh-config",
        choices=SSH_CONFIG_CHOICES,
        default="200",
        help="the ssh_config meshrun reads (MESHRUN_SSH_CONFIG): 200 Host blocks for other "
        "machines (200, default), the same plus `Host *` with ServerAliveInterval "
        "(200-all: ssh -G runs for every host), or none",
    )
    add_bytecode_option(
        parser,
        "cache: let Python cache .pyc files in a private temp dir, as a normal install does "
        "(default; warmed by --warmup); env: leave PYTHONDONTWRITEBYTECODE as it is in the "
        "environment",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    doc = new_doc(
        "fanout",
        args,
        "repeat",
        "warmup",
        "bytecode",
        pythondontwritebytecode_in_env=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        runs=[],
    )

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="meshrun-fanout-") as tmp:
            env = tool_env(Path(tmp) / "pycache" if args.bytecode == "cache" else None)
            ssh_config = write_ssh_config(Path(tmp) / "ssh_config", args.ssh_config)
            if ssh_config is not None:
                env["MESHRUN_SSH_CONFIG"] = str(ssh_config)
            doc["ssh_config"] = args.ssh_config
            print(
                f"bytecode: {args.bytecode}; meshrun tree: {doc['meshrun_tree']['summary']}",
                file=sys.stderr,
            )
            for count in args.hosts:
                base = Path(tmp) / f"fleet{count}"
                print(f"starting a fleet of {count} hosts ...", file=sys.stderr, flush=True)
                with running_fleet(count, base) as fleet:
                    tools = keep_only(build_tools(fleet, base, sys.executable), args.only)
                    results = time_tools(tools, args.repeat, args.warmup, env, Path(tmp))
                    cost = resolution_cost(fleet, ssh_config)
                print(render(count, results, args.repeat, args.bytecode), flush=True)
                print(cost, flush=True)
                doc["runs"].append(as_json(count, results))
        failed = any(t["failures"] for run in doc["runs"] for t in run["tools"].values())
        return 1 if failed else 0

    return run_benchmark("fanout", body, doc, args.json, stopped="fleets stopped")


if __name__ == "__main__":
    sys.exit(main())
