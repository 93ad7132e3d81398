"""The SFTP workspace push sends what rsync sends: ``workspace.plan`` with
``excludes.Excludes`` against the real ``rsync -a --relative --exclude ...`` (a local
copy, the same command line as the rsync push), pattern by pattern."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.config.tasks import BUILTIN_EXCLUDES
from meshrun.workspace.excludes import Excludes
from meshrun.workspace.push import plan

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")

FILES = [
    "a.txt",
    "b.py",
    "build/out.o",
    "build/sub/deep.o",
    "docs/a.txt",
    "docs/build/x.html",
    "docs/[x].md",
    "docs/ünï cødé.txt",
    "notes*.txt",
    "src/a.py",
    "src/sub/a.py",
    "src/sub/b.pyc",
    "src/sub/sub/c.py",
    ".git/HEAD",
    ".meshrun/history.sqlite",
    "keys/api.secret",
    "state/runs/1/log",
]
LINKS = {"link-to-src": "src", "src/sub/up.py": "../a.py", "dangling": "no/such/file"}


def _tree(root: Path) -> Path:
    for rel in FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    for rel, target in LINKS.items():
        (root / rel).symlink_to(target)
    (root / "empty-dir").mkdir()
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory.mktemp("workspace") / "root")


def _kind(path: Path) -> str:
    if path.is_symlink():
        return "link"
    return "dir" if path.is_dir() else "file"


def by_rsync(root: Path, paths: Sequence[str], excludes: Sequence[str], dest: Path) -> set[str]:
    """What rsync -a --relative puts into an empty ``dest``, as "kind path" lines."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    argv = ["rsync", "-a", "--relative", "--mkpath"]
    for pattern in excludes:
        argv += ["--exclude", pattern]
    argv += [f"{root}/./{p}" if p != "." else f"{root}/./" for p in paths]
    subprocess.run([*argv, f"{dest}/"], check=True, capture_output=True)
    found = set()
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            found.add(f"{_kind(path)} {path.relative_to(dest).as_posix()}")
    return found


def by_plan(root: Path, paths: Sequence[str], excludes: Sequence[str]) -> set[str]:
    return {f"{i.kind} {i.path}" for i in plan(root, paths, Excludes.compile(excludes)) if i.path}


PATTERNS = [
    "*.pyc",
    "build",
    "build/",
    "/build",
    "/docs/build",
    "docs/build",
    "sub/a.py",
    "src/sub",
    "/src/sub/",
    "sub",
    "/sub",
    "*.txt",
    "/*.txt",
    "a.*",
    "**/a.py",
    "src/**",
    "src/***",
    "**.py",
    "src/**/c.py",
    "s?c",
    "[ab].txt",
    "[!a].txt",
    "[^a]*",
    "[[:alpha:]].py",
    "docs/\\[x].md",
    "docs/[[]x].md",
    "notes*.txt",
    "notes\\*.txt",
    "ünï*",
    "*/",
    "link-to-src",
    "link-to-src/",
    "dangling",
    "up.py",
    "empty-dir/",
    "state",
    "/state",
    "*",
    "**",
    "- *.py",
    "+ keep.py",
    "[",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_one_pattern_leaves_out_what_rsync_leaves_out(
    tree: Path, tmp_path: Path, pattern: str
) -> None:
    excludes = [*BUILTIN_EXCLUDES, pattern]
    assert by_plan(tree, ["."], excludes) == by_rsync(tree, ["."], excludes, tmp_path / "d")


@pytest.mark.parametrize(
    ("paths", "excludes"),
    [
        (["src/sub", "docs/a.txt"], []),  # parent directories come along (implied)
        (["src/sub"], ["src"]),  # and are not matched against the excludes
        (["src/sub"], ["sub"]),  # the path itself is
        (["build", "docs"], ["/build"]),
        (["link-to-src", "src"], ["*.pyc"]),  # a symlink path is sent as a symlink
        ([".", "src/sub"], ["src"]),  # an explicit path under an excluded directory
        (["src/sub", "src"], []),  # a parent named after its child: all of it
        ([".", "."], []),
        (["src"], ["+ src/sub/a.py", "*.py"]),  # the first rule that matches wins
        (["src"], ["*.py", "!", "sub/"]),  # "!" clears the rules before it
    ],
)
def test_paths_and_rules_send_what_rsync_sends(
    tree: Path, tmp_path: Path, paths: list[str], excludes: list[str]
) -> None:
    assert by_plan(tree, paths, excludes) == by_rsync(tree, paths, excludes, tmp_path / "d")


TOKENS = ["*", "**", "***", "?", "/", "a", ".py", ".txt", "sub", "src", "[ab]", "[!s]", "x", "\\*"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map("".join))
def test_any_pattern_leaves_out_what_rsync_leaves_out(
    tree: Path, tmp_path: Path, pattern: str
) -> None:
    excludes = [pattern]
    assert by_plan(tree, ["."], excludes) == by_rsync(tree, ["."], excludes, tmp_path / "d")


def test_items_carry_modes_times_and_link_targets(tree: Path) -> None:
    items = {i.path: i for i in plan(tree, ["."], Excludes.compile([]))}
    st_ = os.stat(tree / "src" / "a.py")
    assert (items["src/a.py"].mode, items["src/a.py"].mtime, items["src/a.py"].size) == (
        st_.st_mode & 0o7777,
        int(st_.st_mtime),
        st_.st_size,
    )
    assert items["src/sub/up.py"].kind == "link" and items["src/sub/up.py"].target == "../a.py"
    assert items[""].kind == "dir"
    order = list(items)
    assert order.index("src") < order.index("src/sub") < order.index("src/sub/a.py")


def test_a_missing_path_is_an_error(tree: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(plan(tree, ["no-such-path"], Excludes.compile([])))


def test_a_bare_prefix_is_refused_like_rsync_refuses_it() -> None:
    with pytest.raises(ValueError, match="unexpected end of filter rule"):
        Excludes.compile(["- "])
