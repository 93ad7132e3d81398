"""Folding host names into clush-style ranges, and expanding them back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrun.config.hostlist import expand, fold, split_groups


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["h1", "h2", "h3", "h5", "web"], "h[1-3,5],web"),
        (["node03", "node01", "node02"], "node[01-03]"),
        (["h9", "h10"], "h[9-10]"),
        (["h1"], "h1"),
        (["h1", "h1", "h2"], "h[1-2]"),
        (["web"], "web"),
        ([], ""),
        (["rack1-node", "rack2-node", "rack3-node"], "rack[1-3]-node"),
        (["rack1-node1", "rack1-node2", "rack2-node1"], "rack1-node[1-2],rack2-node1"),
        (["node1", "node01", "node02"], "node[01-02],node1"),
        (["node08", "node09", "node10"], "node[08-10]"),
        (["h10", "h2", "h1"], "h[1-2,10]"),
        (["a1b", "a2b", "a1c"], "a[1-2]b,a1c"),
        (["b", "a2", "a1", "a10"], "a[1-2,10],b"),
        (["[::1]:2200", "[::1]:2201"], "[::1]:2200,[::1]:2201"),
    ],
    ids=[
        "spec-example",
        "zero-padded",
        "width-change-unpadded",
        "single-host-stays-plain",
        "duplicates-collapse",
        "no-number",
        "empty",
        "number-in-the-middle",
        "last-number-run",
        "padding-kept-apart",
        "unpadded-joins-padded-of-same-width",
        "numeric-order",
        "suffix-groups",
        "natural-order",
        "bracketed-names-not-folded",
    ],
)
def test_fold(names: list[str], folded: str) -> None:
    assert fold(names) == folded


def test_fold_is_independent_of_input_order() -> None:
    names = ["n3", "web", "n01", "n1", "x9", "n02", "x10"]
    assert fold(names) == fold(reversed(names)) == fold(sorted(names))


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("h[1-3,5]", ["h1", "h2", "h3", "h5"]),
        ("node[01-03]", ["node01", "node02", "node03"]),
        ("node[08-10]", ["node08", "node09", "node10"]),
        ("h[9-10]", ["h9", "h10"]),
        ("web", ["web"]),
        ("rack[1-2]-node", ["rack1-node", "rack2-node"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("h[1,1,2]", ["h1", "h2"]),
    ],
    ids=[
        "ranges",
        "padded",
        "padded-across-decade",
        "width-change",
        "plain",
        "middle",
        "2d",
        "dups",
    ],
)
def test_expand(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


@pytest.mark.parametrize(
    "pattern",
    ["", "h[1-3", "h]1", "h[]", "h[a-b]", "h[3-1]", "h[1-]", "a,b", "h[[1]]", "h[1-1000000]"],
    ids=[
        "empty",
        "unclosed",
        "stray-close",
        "empty-range",
        "letters",
        "backwards",
        "open-ended",
        "top-level-comma",
        "nested",
        "too-large",
    ],
)
def test_expand_rejects_malformed(pattern: str) -> None:
    with pytest.raises(ValueError):
        expand(pattern)


def test_split_groups_keeps_commas_inside_brackets() -> None:
    assert split_groups("h[1-3,5],web,,n[01-02]") == ["h[1-3,5]", "web", "", "n[01-02]"]


@st.composite
def host_name(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["h", "node", "web-", "rack1-n", "db.", ""]))
    suffix = draw(st.sampled_from(["", "", "b", "-eth0", ".lan"]))
    number = draw(st.integers(min_value=0, max_value=120))
    width = draw(st.sampled_from([0, 0, 2, 3]))
    digits = str(number).zfill(width)
    return f"{prefix}{digits}{suffix}"


@given(st.lists(host_name() | st.sampled_from(["web", "db", "mac-mini"]), max_size=40))
def test_fold_then_expand_round_trips(names: list[str]) -> None:
    folded = fold(names)
    expanded = [name for group in split_groups(folded) if group for name in expand(group)]
    assert sorted(expanded) == sorted(set(names)), f"fold gave {folded!r}"
    assert len(expanded) == len(set(expanded)), f"a name appears twice in {folded!r}"
