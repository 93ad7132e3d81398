"""What meshrun installed for each task, so no run leaves an older run's output looking
current.

A CI job publishes ``reports/*.xml`` after ``meshrun dispatch``. If this run's test
task crashed before writing its report, the report from the last green run must not
still be there: the job would show green. So after a run, every output file that an
earlier run installed for one of this run's tasks, and that this run did not produce,
is removed — when it still holds exactly what meshrun installed. A file changed since
(the user edited it) is left in place and reported instead: meshrun deletes only its
own, unchanged bytes.

The record is ``<state>/installed.json``: per task file and task, where the outputs
went, which files (path and SHA-256) and the run that produced them. Only the tasks of
this run are settled: ``--rerun-failed`` leaves the outputs of the tasks it does not
rerun alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshrun.errors import IntegrityError
from meshrun.integrity.manifest import atomic_write, file_digest, safe_relative_path

log = logging.getLogger(__name__)

FILE_NAME = "installed.json"
_VERSION = 1


def _sha256(path: Path) -> str | None:
    """The file's SHA-256; None when it is no readable regular file."""
    try:
        return file_digest(str(path))[1]
    except IntegrityError:
        return None


def _inside(dest: Path, relative: str) -> Path | None:
    """``dest/relative`` when ``relative`` stays inside it; None otherwise (the record
    is a file on disk: never trust it to point outside ``dest``)."""
    try:
        return dest / safe_relative_path(relative)
    except IntegrityError:
        return None


class InstalledOutputs:
    """``<state>/installed.json``, read at the start of :meth:`settle`, written after."""

    def __init__(self, state_root: Path) -> None:
        self.path = Path(state_root) / FILE_NAME
        self._graphs: dict[str, dict[str, Any]] = {}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(document, dict) and document.get("version") == _VERSION:
                graphs = document.get("graphs", {})
                self._graphs = graphs if isinstance(graphs, dict) else {}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: unreadable (%s); outputs of earlier runs are not tracked", self.path, exc
            )

    def settle(
        self,
        graph_key: str,
        task: str,
        dest: Path,
        produced: Mapping[str, str],
        run_id: str,
    ) -> list[str]:
        """Record ``produced`` (path -> SHA-256 under ``dest``) as ``task``'s outputs and
        remove what an earlier run installed for it that this run did not produce.

        Returns what to tell the user: each removed file, each one kept because it
        changed since it was installed.
        """
        tasks = self._graphs.setdefault(graph_key, {})
        previous = tasks.get(task)
        said: list[str] = []
        if isinstance(previous, dict) and previous.get("dest") == str(dest):
            files = previous.get("files")
            earlier_run = previous.get("run_id", "an earlier run")
            for relative, digest in (files if isinstance(files, dict) else {}).items():
                if relative in produced:
                    continue
                target = _inside(dest, str(relative))
                if target is None or not target.is_file() or target.is_symlink():
                    continue
                shown = os.path.relpath(target)
                if _sha256(target) == digest:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                    said.append(
                        f"{task}: removed {shown}: installed by run {earlier_run}, "
                        "not produced by this run"
                    )
                else:
                    said.append(
                        f"{task}: kept {shown}: not produced by this run, and changed since "
                        f"run {earlier_run} installed it"
                    )
        if produced:
            tasks[task] = {"dest": str(dest), "files": dict(produced), "run_id": run_id}
        else:
            tasks.pop(task, None)
        return said

    def paths_under(self, dest: Path) -> set[str]:
        """Every file any task file's run installed into ``dest`` (relative paths): the
        workspace push leaves them out, so a host never holds an older run's output."""
        found: set[str] = set()
        for tasks in self._graphs.values():
            for entry in tasks.values() if isinstance(tasks, dict) else ():
                if isinstance(entry, dict) and entry.get("dest") == str(dest):
                    files = entry.get("files")
                    found.update(str(p) for p in (files if isinstance(files, dict) else ()))
        return found

    def save(self) -> None:
        """Write the record atomically (a killed run leaves the previous one whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"version": _VERSION, "graphs": self._graphs}
        atomic_write(self.path, json.dumps(document, indent=1, sort_keys=True).encode())


__all__ = ["FILE_NAME", "InstalledOutputs"]
