"""The one probe that tells transfers a host's $HOME and whether it has rsync."""

from __future__ import annotations

import subprocess

import pytest

from meshrun.transport.base import FACTS_COMMAND, HostFacts, parse_facts


@pytest.mark.parametrize(
    ("home", "rsync_on_path", "expected"),
    [
        ("/home/ci", True, HostFacts(home="/home/ci", has_rsync=True)),
        ("/home/ci/", False, HostFacts(home="/home/ci", has_rsync=False)),
        ("/", True, HostFacts(home="/", has_rsync=True)),
        ("", True, HostFacts(home=None, has_rsync=True)),  # no $HOME: unknown
        ("relative", False, HostFacts(home=None, has_rsync=False)),
    ],
)
def test_the_probe_as_a_shell_runs_it(
    tmp_path, home: str, rsync_on_path: bool, expected: HostFacts
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if rsync_on_path:
        fake = bin_dir / "rsync"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    out = subprocess.run(
        ["/bin/sh", "-c", FACTS_COMMAND],
        env={"HOME": home, "PATH": str(bin_dir)},
        capture_output=True,
        check=True,
    ).stdout
    assert parse_facts(out) == expected


def test_garbage_is_unknown_not_an_error() -> None:
    assert parse_facts(b"") == HostFacts(home=None, has_rsync=False)
    assert parse_facts(b"\xff\xfe\n") == HostFacts(home=None, has_rsync=False)
