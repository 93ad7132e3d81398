"""Unit-test fixtures shared by the CLI tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    """cli.main() ends with gc.freeze(): give the test process its collector back."""
    yield
    gc.unfreeze()
