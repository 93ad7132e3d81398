"""The collect program run locally (as a host would run it) and the pure helpers around it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshrun.errors import IntegrityError
from meshrun.integrity.collect import (
    collect_command,
    collect_request,
    collect_source,
    parse_collect_output,
)
from meshrun.integrity.manifest import FileEntry
from meshrun.transport.rsync import RemoteShell, pull_argv

COLLECT_SCRIPT = collect_source()


def run_script(workdir: Path, *patterns: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT_SCRIPT],
        cwd=workdir,
        input=collect_request(patterns),
        capture_output=True,
        check=True,
    )
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def paths(doc: dict[str, Any]) -> list[str]:
    return [f["path"] for f in doc["files"]]


def write(root: Path, rel: str, data: bytes = b"x", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    for rel in ("dist/a.bin", "dist/sub/b.bin", "dist/sub/deep/c.bin", "dist/.hidden"):
        write(root, rel, rel.encode())
    write(root, "top.txt", b"top")
    write(root, "other.txt", b"other")
    write(root, "logs/x.log")
    write(root, "logs/y/z.log")
    write(root, "a.log")
    return root


def test_dist_double_star_takes_every_nested_file(tree: Path) -> None:
    doc = run_script(tree, "dist/**")
    assert doc["errors"] == []
    assert paths(doc) == ["dist/.hidden", "dist/a.bin", "dist/sub/b.bin", "dist/sub/deep/c.bin"]
    assert Path(doc["root"]).resolve() == tree.resolve()


@pytest.mark.parametrize("pattern", ["dist", "dist/", "./dist/**"])
def test_directory_pattern_means_every_file_below(tree: Path, pattern: str) -> None:
    assert len(paths(run_script(tree, pattern))) == 4


def test_star_is_anchored_and_double_star_any_depth(tree: Path) -> None:
    assert paths(run_script(tree, "*.txt")) == ["other.txt", "top.txt"]
    assert paths(run_script(tree, "**/*.log")) == ["a.log", "logs/x.log", "logs/y/z.log"]
    assert paths(run_script(tree, "dist/sub/b.bin")) == ["dist/sub/b.bin"]
    assert paths(run_script(tree, "dist/*/b.bin")) == ["dist/sub/b.bin"]


def test_overlapping_patterns_list_a_file_once(tree: Path) -> None:
    doc = run_script(tree, "*.txt", "top.txt", "**/top.txt")
    assert paths(doc) == ["other.txt", "top.txt"]


def test_hash_size_and_mode(tree: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    write(tree, "big.bin", data, mode=0o750)
    (entry,) = run_script(tree, "big.bin")["files"]
    assert entry == {
        "path": "big.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": 0o750,
    }
    FileEntry.from_dict(entry)


@pytest.mark.parametrize("pattern", ["../x", "dist/../../x", "/etc/passwd", "a/../b"])
def test_escaping_patterns_are_refused(tree: Path, pattern: str) -> None:
    doc = run_script(tree, pattern)
    assert doc["files"] == []
    assert [e["pattern"] for e in doc["errors"]] == [pattern]
    message = doc["errors"][0]["message"]
    assert "absolute" in message or "'..'" in message


def test_symlink_leaving_the_workdir_is_refused(tree: Path, tmp_path: Path) -> None:
    secret = write(tmp_path, "secret", b"secret")
    (tree / "dist" / "leak").symlink_to(secret)
    doc = run_script(tree, "dist/**")
    assert "dist/leak" not in paths(doc)
    assert len(doc["errors"]) == 1
    assert doc["errors"][0]["pattern"] == "dist/**"
    assert "outside the workdir" in doc["errors"][0]["message"]
    assert "dist/leak" in doc["errors"][0]["message"]


def test_symlink_to_a_file_inside_is_collected_as_the_file(tree: Path) -> None:
    (tree / "link.txt").symlink_to("top.txt")
    (entry,) = run_script(tree, "link.txt")["files"]
    assert entry["path"] == "link.txt"
    assert entry["sha256"] == hashlib.sha256(b"top").hexdigest()


def test_symlinked_directory_is_refused_not_walked(tree: Path, tmp_path: Path) -> None:
    (tree / "dist" / "loop").symlink_to(tree)
    doc = run_script(tree, "dist/**")
    assert [e["pattern"] for e in doc["errors"]] == ["dist/**"]
    assert "symlink to a directory" in doc["errors"][0]["message"]


def test_fifo_is_refused_with_the_pattern_named(tree: Path) -> None:
    os.mkfifo(tree / "dist" / "pipe")
    doc = run_script(tree, "dist/**")  # must not hang on the FIFO
    assert [e["pattern"] for e in doc["errors"]] == ["dist/**"]
    assert "special file" in doc["errors"][0]["message"]
    assert "pipe" in doc["errors"][0]["message"]


def test_socket_is_refused(tree: Path) -> None:
    path = tree / "s.sock"
    if len(os.fsencode(path)) > 100:
        pytest.skip("path too long for a unix socket")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        doc = run_script(tree, "s.sock")
    finally:
        sock.close()
    assert doc["errors"][0]["pattern"] == "s.sock"
    assert "special file" in doc["errors"][0]["message"]


def test_unmatched_pattern_is_an_error_unless_optional(tree: Path) -> None:
    doc = run_script(tree, "nope/**", "?maybe/**", "top.txt", "?top.txt")
    assert [e["pattern"] for e in doc["errors"]] == ["nope/**"]
    assert "matched no file" in doc["errors"][0]["message"]
    assert paths(doc) == ["top.txt"]


def test_empty_directory_matches_no_file(tree: Path) -> None:
    (tree / "empty").mkdir()
    doc = run_script(tree, "empty/**")
    assert [e["pattern"] for e in doc["errors"]] == ["empty/**"]


ODD_NAMES = ["with space.txt", "ünïcødé-名前.bin", "new\nline.txt", "tab\tand 'quote\".x"]


def test_odd_names_are_collected_and_hashed(tmp_path: Path) -> None:
    root = tmp_path / "work"
    for name in ODD_NAMES:
        write(root, f"out/{name}", name.encode())
    doc = run_script(root, "out/**")
    assert doc["errors"] == []
    by_path = {f["path"]: f for f in doc["files"]}
    assert sorted(by_path) == sorted(f"out/{n}" for n in ODD_NAMES)
    for name in ODD_NAMES:
        assert by_path[f"out/{name}"]["sha256"] == hashlib.sha256(name.encode()).hexdigest()


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 names")
def test_undecodable_name_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "out").mkdir(parents=True)
    (root / "out" / "ok").write_bytes(b"1")
    with open(os.path.join(os.fsencode(root / "out"), b"bad\xff"), "wb") as f:
        f.write(b"2")
    doc = run_script(root, "out/**")
    assert paths(doc) == ["out/ok"]
    assert doc["errors"][0]["pattern"] == "out/**"
    assert "not valid UTF-8" in doc["errors"][0]["message"]


def test_parse_output_raises_naming_every_pattern(tree: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT_SCRIPT],
        cwd=tree,
        input=collect_request(["../up", "missing", "top.txt"]),
        capture_output=True,
        check=True,
    )
    with pytest.raises(IntegrityError) as info:
        parse_collect_output(done.stdout, where="h1")
    assert info.value.exit_code == 4
    assert "'../up'" in str(info.value) and "'missing'" in str(info.value)
    assert str(info.value).startswith("h1: ")


def test_parse_output_builds_entries(tree: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT_SCRIPT],
        cwd=tree,
        input=collect_request(["*.txt"]),
        capture_output=True,
        check=True,
    )
    root, files = parse_collect_output(done.stdout)
    assert Path(root).resolve() == tree.resolve()
    assert [f.path for f in files] == ["other.txt", "top.txt"]
    assert files[1] == FileEntry("top.txt", 3, hashlib.sha256(b"top").hexdigest(), 0o644)


def test_parse_output_rejects_garbage() -> None:
    with pytest.raises(IntegrityError, match="garbage"):
        parse_collect_output(b"not json")


def test_collect_command_runs_in_the_workdir_through_sh(tree: Path) -> None:
    done = subprocess.run(
        ["/bin/sh", "-c", collect_command(str(tree))],
        input=collect_request(["top.txt"]),
        capture_output=True,
        check=True,
    )
    assert paths(json.loads(done.stdout)) == ["top.txt"]


def test_collect_command_with_home_workdir() -> None:
    assert collect_command("~/w s").startswith("cd -- \"$HOME\"/'w s' && exec python3 -I -S -c ")


def test_pull_argv_shape() -> None:
    rsh = RemoteShell(argv=("/usr/bin/python3", "-I", "-S", "/x/rsh helper.py"), host="meshrun-1")
    argv = pull_argv(rsh=rsh, root="/srv/work dir", list_file="/tmp/l", into="/tmp/recv")
    assert argv[0] == "rsync"
    assert "--from0" in argv and "--files-from=/tmp/l" in argv and "--protect-args" in argv
    assert argv[argv.index("-e") + 1] == "/usr/bin/python3 -I -S '/x/rsh helper.py'"
    assert argv[-2:] == ["meshrun-1:/srv/work dir/", "/tmp/recv/"]
    home = pull_argv(rsh=rsh, root="~/w", list_file="/tmp/l", into="/tmp/recv")
    assert home[-2] == "meshrun-1:w/"
