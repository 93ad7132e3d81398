"""The workspace mirror's pure parts: what the local tree holds, what differs, the
hash cache's keys, and the per-workspace workdir key."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshrun.workspace.excludes import Excludes
from meshrun.workspace.mirror import HashCache, LocalEntry, LocalTree, build_tree, diff
from meshrun.workspace.workdirs import WORKDIRS, workdir_key

NONE = Excludes.compile([])


def _tree(root: Path, paths: tuple[str, ...] = (".",), **kw: Any) -> LocalTree:
    return build_tree(root, paths, kw.pop("excludes", NONE), **kw)


def _remote(tree: LocalTree) -> list[list[Any]]:
    """What the agent reports for an exact copy of ``tree`` it wrote itself."""
    out: list[list[Any]] = []
    for path, e in tree.entries.items():
        if not path:
            continue
        kind = {"dir": "d", "file": "f", "link": "l"}[e.kind]
        sha = e.sha256 if e.kind == "file" else None
        out.append([path, kind, e.mode, e.size, e.mtime_ns, sha, e.target or None])
    return out


def _project(base: Path) -> Path:
    root = base / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("print('a')\n")
    (root / "b.txt").write_text("b\n")
    (root / "link").symlink_to("b.txt")
    return root


def test_the_tree_hashes_files_and_marks_the_directories_it_lists(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    assert set(tree.entries) == {"", "src", "src/a.py", "b.txt", "link"}
    assert tree.entries["link"].target == "b.txt"
    assert len(tree.entries["b.txt"].sha256) == 64
    assert tree.full_dirs == ("", "src")
    assert tree.lone == ()


def test_a_sync_path_below_the_root_lists_its_parents_as_lone_entries(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path), ("src/a.py", "b.txt"))
    assert set(tree.entries) == {"src", "src/a.py", "b.txt"}
    assert tree.full_dirs == ()
    assert set(tree.lone) == {"src", "src/a.py", "b.txt"}


def test_hidden_outputs_are_left_out(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path), hide={"b.txt"})
    assert "b.txt" not in tree.entries


def test_an_exact_copy_needs_nothing(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    changes = diff(tree, _remote(tree), NONE)
    assert (changes.delete, changes.mkdir, changes.links, changes.puts, changes.attrs) == (
        (),
        (),
        (),
        (),
        (),
    )


def test_extras_are_deleted_unless_excluded_and_purged_paths_always(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    remote = [
        *_remote(tree),
        ["stray.txt", "f", 0o644, 1, 1, None, None],
        ["node_modules", "d", 0o755, 0, 1, None, None],
        ["src/old", "d", 0o755, 0, 1, None, None],
        ["reports/r.xml", "f", 0o644, 1, 1, None, None],
    ]
    excludes = Excludes.compile(["node_modules/", "reports/"])
    changes = diff(tree, remote, excludes, purge={"reports/r.xml"})
    assert set(changes.delete) == {"stray.txt", "src/old", "reports/r.xml"}


def test_content_is_compared_by_hash_not_by_size_and_time(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    remote = _remote(tree)
    for entry in remote:
        if entry[0] == "b.txt":
            entry[5] = "0" * 64  # same size and mtime, other content
        if entry[0] == "src/a.py":
            entry[5] = None  # changed since the agent wrote it: unknown
    changes = diff(tree, remote, NONE)
    assert {e.path for e in changes.puts} == {"b.txt", "src/a.py"}


def test_a_mode_or_time_change_alone_is_fixed_without_sending(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    remote = _remote(tree)
    for entry in remote:
        if entry[0] == "b.txt":
            entry[2] = 0o600
    changes = diff(tree, remote, NONE)
    assert changes.puts == ()
    assert changes.attrs == (("b.txt", tree.entries["b.txt"].mode, tree.entries["b.txt"].mtime_ns),)


def test_a_kind_change_deletes_then_recreates(tmp_path: Path) -> None:
    tree = _tree(_project(tmp_path))
    remote = [e for e in _remote(tree) if e[0] not in ("src", "src/a.py", "link")]
    remote += [["src", "f", 0o644, 1, 1, None, None], ["link", "l", 0, 0, 0, None, "elsewhere"]]
    changes = diff(tree, remote, NONE)
    assert set(changes.delete) == {"src"}
    assert changes.mkdir == (("src", tree.entries["src"].mode),)
    assert {e.path for e in changes.puts} == {"src/a.py"}
    assert changes.links == (("link", "b.txt"),)


_names = st.sampled_from(["a", "b", "c", "d/e", "d/f"])


@given(
    local=st.dictionaries(_names, st.sampled_from(["x", "yy", "z"])),
    remote=st.dictionaries(_names, st.sampled_from(["x", "yy", "q", None])),
)
def test_after_the_difference_the_host_holds_exactly_the_tree(
    local: dict[str, str], remote: dict[str, str | None]
) -> None:
    """Simulate the agent applying ``diff``: the result equals the local files."""
    entries: dict[str, LocalEntry] = {"": LocalEntry("", "dir", 0o755)}
    if any(p.startswith("d/") for p in local):
        entries["d"] = LocalEntry("d", "dir", 0o755)
    for path, text in sorted(local.items()):
        entries[path] = LocalEntry(path, "file", 0o644, len(text), 1, text)
    tree = LocalTree(Path("/nowhere"), entries, ("", "d") if "d" in entries else ("",), ())
    host: dict[str, str | None] = dict(remote)
    listing = [[p, "f", 0o644, 1, 1, sha, None] for p, sha in host.items() if "/" not in p]
    if any(p.startswith("d/") for p in host):
        listing.append(["d", "d", 0o755, 0, 1, None, None])
        if "d" in entries:
            listing += [[p, "f", 0o644, 1, 1, sha, None] for p, sha in host.items() if "/" in p]
    changes = diff(tree, listing, NONE)
    for path in changes.delete:
        host = {p: v for p, v in host.items() if p != path and not p.startswith(path + "/")}
    for entry in changes.puts:
        host[entry.path] = entry.sha256
    assert host == local


def _seeded(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """A file and a cache that holds the key of the file as it is now, with a fake hash."""
    target = tmp_path / "f.txt"
    target.write_text(text)
    st_ = os.lstat(target)
    cache_file = tmp_path / "cache.json"
    key = [st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns, st_.st_ino]
    cache_file.write_text(json.dumps({"version": 1, "files": {"f.txt": [*key, "cafe"]}}))
    return target, cache_file


def test_a_same_size_same_mtime_edit_misses_the_cache(tmp_path: Path) -> None:
    target, cache_file = _seeded(tmp_path, "one")
    before = os.lstat(target)
    time.sleep(0.01)  # a later clock tick for ctime
    target.write_text("two")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.lstat(target)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    digest = HashCache(cache_file).sha256("f.txt", str(target), after)
    assert digest == hashlib.sha256(b"two").hexdigest()


def test_a_file_written_just_now_is_not_cached(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("one")
    cache_file = tmp_path / "cache.json"
    cache = HashCache(cache_file)
    assert (
        cache.sha256("f.txt", str(target), os.lstat(target)) == hashlib.sha256(b"one").hexdigest()
    )
    cache.save({"f.txt"})
    assert not cache_file.exists(), "a file younger than the clock's resolution was cached"


def test_a_cached_hash_is_used_while_the_key_matches(tmp_path: Path) -> None:
    target, cache_file = _seeded(tmp_path, "one")
    assert HashCache(cache_file).sha256("f.txt", str(target), os.lstat(target)) == "cafe"


def test_the_workdir_key_names_the_workspace_and_differs_per_checkout_and_task_file(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "my proj", tmp_path / "other"
    a.mkdir()
    b.mkdir()
    key = workdir_key(a, "tasks.toml", machine="m1")
    assert key.startswith("my_proj-") and len(key.split("-")[-1]) == 12
    assert key == workdir_key(a, "tasks.toml", machine="m1")
    others = {
        workdir_key(b, "tasks.toml", machine="m1"),
        workdir_key(a, "ci/tasks.toml", machine="m1"),
        workdir_key(a, "tasks.toml", machine="m2"),
    }
    assert key not in others and len(others) == 3


def test_a_claim_takes_the_next_number_while_one_is_held(tmp_path: Path) -> None:
    from meshrun.agent import remote

    first: list[int] = []
    path = remote.claim(str(tmp_path), "proj-abc", first)
    assert path == str(tmp_path / WORKDIRS / "proj-abc")
    second: list[int] = []
    assert remote.claim(str(tmp_path), "proj-abc", second) == path + ".2"
    for fd in first + second:
        os.close(fd)


def test_a_claim_waits_for_the_workdir_it_held_before(tmp_path: Path) -> None:
    """Set up again after its link dropped, a host goes on in its own copy once the old
    agent lets go, rather than starting a new one."""
    import threading

    from meshrun.agent import remote

    old: list[int] = []
    path = remote.claim(str(tmp_path), "proj-abc", old)
    threading.Timer(0.3, lambda: os.close(old[0])).start()
    again: list[int] = []
    assert remote.claim(str(tmp_path), "proj-abc", again, "proj-abc", 5.0) == path
    os.close(again[0])
