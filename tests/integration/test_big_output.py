"""Output of any size: linear time, bounded coordinator memory, nothing lost in logs.

Once, 40 MB without a newline took a minute (lines were re-joined on every chunk) and
every byte of output was also kept in memory for the report. Here a host prints
200 MB without a newline, then millions of short lines; the coordinator's peak RSS is
read by a parent process of its own (``ru_maxrss`` of its children), so nothing else
this test session ran counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dispatch_helpers import write_project
from helpers import meshrun_argv, write_inventory

from meshrun.testing.fleet import Fleet

#: 200 MB of 'x' and no newline, then 2 million numbered lines (~15 MB).
BIG = "head -c 200000000 /dev/zero | tr '\\0' x; echo; seq 1 2000000"
#: The coordinator's peak memory must stay under this whatever the output.
RSS_LIMIT_KB = 200 * 1024

_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
head = f"{peak}\\n{done.returncode}\\n{len(done.stdout)}\\n".encode()
sys.stdout.buffer.write(head + done.stdout[-2_000_000:])
"""


def _measured(*args: str | Path, cwd: Path) -> tuple[int, int, int, bytes]:
    """(peak RSS in KB, exit code, stdout size, stdout's last 2 MB) of one meshrun run."""
    argv = [sys.executable, "-c", _MEASURE, *meshrun_argv(), *map(str, args)]
    out = subprocess.run(argv, capture_output=True, timeout=300, cwd=cwd, check=True).stdout
    rss, rc, size, rest = out.split(b"\n", 3)
    return int(rss), int(rc), int(size), rest


def test_exec_json_keeps_a_bounded_head_and_tail_in_bounded_memory(
    fleet4: Fleet, tmp_path: Path
) -> None:
    hosts = write_inventory(tmp_path / "hosts.toml", fleet4, names=["h1"])
    rss_kb, rc, size, stdout = _measured(
        "exec", "--hosts", hosts, "--json", "--", BIG, cwd=tmp_path
    )
    assert rc == 0
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} KB for 215 MB of output"
    assert size < 4_000_000, f"the JSON document is {size} bytes: the output was not bounded"
    host = json.loads(stdout)["hosts"][0]
    assert host["stdout"].startswith("x" * 1000) and host["stdout"].endswith("1999999\n2000000\n")
    assert "bytes of output left out here]" in host["stdout"]


def test_dispatch_streams_it_all_to_the_log_in_bounded_memory(
    fleet4: Fleet, tmp_path: Path
) -> None:
    hosts = write_inventory(tmp_path / "hosts.toml", fleet4, names=["h1"])
    tasks_file = write_project(tmp_path / "proj", [{"name": "big", "run": BIG}])
    rss_kb, rc, _, _ = _measured(
        "dispatch", tasks_file, "--hosts", hosts, "--no-sync", "-o", "stream", cwd=tmp_path
    )
    assert rc == 0
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} KB for 215 MB of output"
    (log,) = (tmp_path / "proj" / ".meshrun" / "runs").glob("*/logs/big.log")
    with open(log, "rb") as f:
        header = f.readline()
        assert header.startswith(b"# meshrun:"), header
        assert f.read(200_000_000) == b"x" * 200_000_000, "the log lost output"
        assert f.read(8) == b"\n1\n2\n3\n4"
