"""Sizes as options take them."""

from __future__ import annotations

import pytest

from meshrun.config.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("1500", 1500), ("10G", 10 << 30), ("512MiB", 512 << 20), ("4 kb", 4096), ("1T", 1 << 40)],
)
def test_sizes_people_write(text: str, value: int) -> None:
    assert parse_size(text, option="--x") == value


@pytest.mark.parametrize("text", ["", "ten", "-1", "1.5G", "10X", "10GG"])
def test_anything_else_names_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"--pull-max-bytes .* is not a size: write e\.g\. 500M"):
        parse_size(text, option="--pull-max-bytes")


def test_sizes_read_back() -> None:
    assert [format_size(n) for n in (10 << 30, 1536, 1000)] == [
        "10 GiB",
        "1536 bytes",
        "1000 bytes",
    ]
