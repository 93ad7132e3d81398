"""Error text passed up a layer says nothing twice."""

from __future__ import annotations

import pytest

from meshrun.errors import in_context


@pytest.mark.parametrize(
    ("context", "message", "expected"),
    [
        # The example: the pull's own message already says "pull failed".
        (
            "pull failed",
            "h1: pull failed (rsync exit 255): connection closed",
            "pull failed (rsync exit 255): connection closed",
        ),
        (
            "pull failed",
            "h1: could not open an SSH channel: EOF",
            "pull failed: could not open an SSH channel: EOF",
        ),
        (
            "pushing its inputs failed",
            "h1: pushing inputs failed (rsync exit 12): protocol error",
            "pushing inputs failed (rsync exit 12): protocol error",
        ),
        (
            "collecting outputs failed",
            "h1: pull failed (rsync exit 23): some files vanished",
            "collecting outputs failed: pull failed (rsync exit 23): some files vanished",
        ),
        # Another host's name is not stripped: it says where the failure was.
        ("pull failed", "h2: pull failed (x)", "pull failed: h2: pull failed (x)"),
    ],
)
def test_in_context_drops_the_host_and_a_repeated_prefix(
    context: str, message: str, expected: str
) -> None:
    assert in_context(context, message, host="h1") == expected
