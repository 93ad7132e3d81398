"""The state directory and a run's directory: every path a run writes, in one place,
and the one way its documents are written.

::

    <state dir>/                         .meshrun (or --state-dir)
      history.sqlite                     dispatch: learned durations, past runs
      workspace-hashes.json              dispatch: the workspace's hash cache
      runs/<run-id>/                     one run (exec/run only when they pull or sign)
        report.json                      the --json document of the run
        manifest.json, manifest.json.sig every file, its sha256; the Ed25519 signature
        journal.jsonl                    dispatch: one line per task end, while it runs
        logs/                            dispatch: each attempt's output
        artifacts/<task>/<path>          dispatch: the verified outputs of each task
        hosts/<host>/<path>              exec/run --pull: the files of each host

``meshrun verify`` reads a run directory (or a pull/artifacts directory holding a copy
of the manifest); ``--rerun-failed`` reads the latest run's report through the history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meshrun.records import record

#: The ``--json`` documents' schema version: extend, never break.
SCHEMA = 1

RUNS_DIR = "runs"
HISTORY_NAME = "history.sqlite"
REPORT_NAME = "report.json"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
JOURNAL_NAME = "journal.jsonl"
LOGS_DIR = "logs"
#: dispatch: ``artifacts/<task>/<path>``
DISPATCH_FILES_DIR = "artifacts"
#: exec/run --pull: ``hosts/<host>/<path>``
FLEET_FILES_DIR = "hosts"

#: Runs kept in the state directory unless ``--keep-runs`` says otherwise (0 keeps all):
#: a few weeks of one CI job, about 24 MB of history rows for 10,000-task graphs (the
#: rules are in dispatch/retention.py).
DEFAULT_KEEP_RUNS = 20

#: Where state lives when no ``--state-dir`` is given (exec/run: relative to the cwd;
#: dispatch: beside the tasks file).
DEFAULT_STATE_DIR = Path(".meshrun")


#: A document with a list longer than this (a 10,000-task run's ``tasks``) is written
#: with one entry of each such list per line: ``indent`` makes ``json`` use its
#: pure-Python encoder (a 10,000-task report: 0.21 s of CPU, written twice with
#: ``--json``), one line per entry takes the C encoder (0.07 s, and 30 % fewer bytes).
LONG_LIST = 200


def document_json(document: dict[str, Any]) -> str:
    """A document as meshrun prints and saves it: indented, UTF-8 kept as it is (a host
    name or an output line in any script reads the same in the file and on screen); a
    long list (``LONG_LIST``) has one compact entry per line."""
    import json  # only when a document is written: off exec's start

    if not any(isinstance(v, list) and len(v) > LONG_LIST for v in document.values()):
        return json.dumps(document, indent=2, ensure_ascii=False)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    indented = json.JSONEncoder(ensure_ascii=False, indent=2).encode
    lines = []
    for key, value in document.items():
        if isinstance(value, list) and len(value) > LONG_LIST:
            entries = ",\n".join("    " + encode(entry) for entry in value)
            text = "[\n" + entries + "\n  ]"
        else:
            text = indented(value).replace("\n", "\n  ")
        lines.append(f"  {encode(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}"


@record
class RunDir:
    """``<state dir>/runs/<run-id>``: the paths of one run's record."""

    path: Path

    @property
    def report(self) -> Path:
        return self.path / REPORT_NAME

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_NAME

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def artifacts(self) -> Path:
        return self.path / DISPATCH_FILES_DIR

    @property
    def hosts(self) -> Path:
        return self.path / FLEET_FILES_DIR

    def write_report(self, document: dict[str, Any]) -> Path:
        """Write report.json (the run's ``--json`` document), the one way every run
        writes it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.report.write_text(document_json(document) + "\n", encoding="utf-8")
        return self.report


@record
class StateDir:
    """``.meshrun/`` (or ``--state-dir``): history.sqlite and runs/<run-id>/."""

    root: Path

    @classmethod
    def for_tasks(
        cls, tasks_file: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None
    ) -> StateDir:
        """dispatch's state: ``--state-dir``, else ``.meshrun`` beside the tasks file
        (learned durations belong to the project, wherever it is run from)."""
        if state_dir:
            return cls(Path(state_dir))
        return cls(Path(tasks_file).resolve().parent / DEFAULT_STATE_DIR)

    @property
    def history(self) -> Path:
        return self.root / HISTORY_NAME

    @property
    def runs(self) -> Path:
        return self.root / RUNS_DIR

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.run_dir(run_id))


__all__ = [
    "DEFAULT_KEEP_RUNS",
    "DEFAULT_STATE_DIR",
    "DISPATCH_FILES_DIR",
    "FLEET_FILES_DIR",
    "HISTORY_NAME",
    "JOURNAL_NAME",
    "LOGS_DIR",
    "MANIFEST_NAME",
    "REPORT_NAME",
    "RUNS_DIR",
    "SCHEMA",
    "SIGNATURE_NAME",
    "RunDir",
    "StateDir",
    "document_json",
]
