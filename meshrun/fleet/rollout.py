"""Rolling batches and failure budgets for fleet runs (like Ansible's ``serial``).

Pure: a spec and a host count in, batch sizes out.
"""

from __future__ import annotations

import math

from meshrun.records import record


def _parse_amount(item: str, what: str) -> tuple[float, bool]:
    text = item.strip()
    is_percent = text.endswith("%")
    number = text[:-1] if is_percent else text
    try:
        value = float(number) if is_percent else int(number)
    except ValueError:
        raise ValueError(
            f"{what}: {item!r} is not a number or a percentage (write e.g. 1, 5 or 25%)"
        ) from None
    return value, is_percent


def batch_sizes(spec: str, host_count: int) -> list[int]:
    """Batch sizes for ``--batch`` (``1,25%,100%``): the last size repeats until done.

    A percentage is of all selected hosts, rounded down but at least 1.
    """
    if host_count <= 0:
        return []
    sizes: list[int] = []
    for item in spec.split(","):
        value, is_percent = _parse_amount(item, "--batch")
        if is_percent:
            if not 0 < value <= 100:
                raise ValueError(f"--batch: {item!r} must be between 0% and 100%")
            size = max(1, math.floor(host_count * value / 100))
        else:
            if value < 1:
                raise ValueError(f"--batch: {item!r} must be at least 1")
            size = int(value)
        sizes.append(size)
    if not sizes:
        raise ValueError("--batch is empty (write e.g. 1,25%,100%)")
    out: list[int] = []
    left = host_count
    i = 0
    while left > 0:
        size = min(sizes[min(i, len(sizes) - 1)], left)
        out.append(size)
        left -= size
        i += 1
    return out


@record
class FailureBudget:
    """``--max-fail``: how many failed hosts are tolerated before no more start."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, spec: str) -> FailureBudget:
        value, is_percent = _parse_amount(spec, "--max-fail")
        if value < 0 or (is_percent and value > 100):
            raise ValueError(f"--max-fail: {spec!r} must be 0..N or 0%..100%")
        return cls(percent=float(value)) if is_percent else cls(count=int(value))

    def exceeded(self, failed: int, host_count: int) -> bool:
        """True once more hosts failed than the budget allows."""
        if self.count is not None:
            return failed > self.count
        if self.percent is not None:
            return failed > host_count * self.percent / 100
        return False
