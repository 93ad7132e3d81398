"""Run ids: sortable by time, unique across coordinators."""

from __future__ import annotations

import os
import time


def new_run_id() -> str:
    """``20261123T152519Z-3fa9c1``: UTC start time, then 24 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
