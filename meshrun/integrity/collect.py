"""Collect a task's declared outputs on its host: expand the patterns, hash every file there.

The collect program (:data:`SCRIPT_FILE`: stdlib-only Python 3, a file of the package
read as the agent's source is, sent as the text of ``python3 -c``) runs on the host in
the task's workdir, expands the ``outputs`` patterns, hashes every file (sha256, size,
mode, read 1 MiB at a time) and prints one JSON document. :func:`collect` runs it and
turns every refusal into an :class:`~meshrun.errors.IntegrityError` (exit 4);
:mod:`meshrun.integrity.pull` then brings the files home, checked against these hashes.

Output patterns (rsync / gitignore habits)
    Patterns are relative to the workdir and anchored there; ``/`` separates parts.

    - ``*`` / ``?`` / ``[abc]`` match within one name, never across ``/``; ``*`` also
      matches names starting with ``.`` (nothing is skipped silently).
    - ``**`` as a whole part matches any number of directories (zero included):
      ``**/*.log`` is every ``.log`` file at any depth.
    - A pattern that matches a directory takes every file below it, so ``dist``,
      ``dist/`` and ``dist/**`` all mean every file below ``dist`` (a trailing ``/``
      only requires the match to be a directory).
    - A leading ``?`` marks the pattern optional: ``?coverage/**`` may match nothing.
      (So a pattern whose first character is the single-character wildcard is
      written ``??x``.)
    - Refused, with the pattern named: an absolute pattern, a ``..`` part, a match
      whose real path leaves the workdir (a symlink pointing outside it), a special
      file (FIFO, socket, device), a name that is not valid UTF-8, a symlinked
      directory (never walked), and a pattern that matches no file unless optional.
    - A symlink to a regular file inside the workdir is collected as that file's
      content under the symlink's name.
    - ``.meshrun/`` at the top of the workdir (meshrun's agent and uploaded scripts)
      is never taken: ``*``, ``**`` and ``.`` pass it by, and a pattern naming it is
      refused.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from functools import cache
from importlib import resources

from meshrun.errors import CommandError, InputError, IntegrityError
from meshrun.integrity.manifest import FileEntry
from meshrun.records import record
from meshrun.transport.base import Connection
from meshrun.transport.capture import tail_text
from meshrun.transport.wrapper import workdir_expr

#: The collect program, beside this module in the package (stdlib only, never imported).
SCRIPT_FILE = "collect_script.py"


@cache
def collect_source() -> str:
    """The collect program's text, exactly as sent to hosts."""
    return resources.files("meshrun.integrity").joinpath(SCRIPT_FILE).read_text("utf-8")


def collect_command(workdir: str) -> str:
    """The shell line that runs the collect program in ``workdir`` (request on stdin)."""
    # -I -S: no user site, no environment, no site import: faster, and nothing of the
    # host's Python set-up changes what the stdlib-only program does.
    script = shlex.quote(collect_source())
    return f"cd -- {workdir_expr(workdir)} && exec python3 -I -S -c {script}"


def collect_request(patterns: Sequence[str]) -> bytes:
    """What the collect program reads on stdin."""
    return json.dumps({"patterns": list(patterns)}).encode("utf-8")


@record
class Refusal:
    """A pattern the host's collect program refused or found nothing for.

    ``kind``: ``"unmatched"`` (no file, pattern not optional), ``"unreadable"``
    (cannot stat, list or open: permissions) or ``"refused"`` (unsafe: absolute, ``..``,
    leaves the workdir through a symlink, special file, symlinked directory, bad name).
    """

    pattern: str
    message: str
    kind: str = "refused"

    def describe(self, what: str = "output") -> str:
        return f"{what} {self.pattern!r}: {self.message}"


def parse_collect_report(
    stdout: bytes, *, where: str = "host"
) -> tuple[str, list[FileEntry], list[Refusal]]:
    """The workdir's absolute path, its files and the refusals, from the script's output.

    Garbage (not the script's JSON, a malformed file entry) is an IntegrityError.
    """
    try:
        doc = json.loads(stdout.decode("utf-8"))
        root = doc["root"]
        raw_files = doc["files"]
        refusals = [
            Refusal(str(e["pattern"]), str(e["message"]), str(e.get("kind", "refused")))
            for e in doc["errors"]
        ]
        if not isinstance(root, str) or not isinstance(raw_files, list):
            raise TypeError("bad types")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{where}: output collection answered garbage ({exc})") from None
    files = [FileEntry.from_dict(item, f"{where}: file") for item in raw_files]
    return root, files, refusals


def parse_collect_output(stdout: bytes, *, where: str = "host") -> tuple[str, list[FileEntry]]:
    """The workdir's absolute path and its files, from the script's output.

    Refusals the script reported become one IntegrityError naming every pattern.
    """
    root, files, refusals = parse_collect_report(stdout, where=where)
    if refusals:
        raise IntegrityError(
            f"{where}: " + "; ".join(r.describe() for r in refusals),
            fix="outputs must be regular files inside the task's workdir",
        )
    return root, files


def collect_report(
    conn: Connection, workdir: str, patterns: Sequence[str], *, timeout_s: float = 3600.0
) -> tuple[str, list[FileEntry], list[Refusal]]:
    """Run the collect program in ``workdir``: its absolute path, the files, the refusals.

    Refusals are data here (the caller decides what each kind costs); CommandError when
    the program could not run (no python3, no workdir).
    """
    name = conn.host.name
    result = conn.run_raw(
        collect_command(workdir), stdin=collect_request(patterns), timeout_s=timeout_s
    )
    if result.exit_code != 0:
        fix = "is python3 installed on the host?" if result.exit_code == 127 else None
        raise CommandError(
            f"{name}: collecting outputs failed (exit {result.exit_code}): "
            f"{tail_text(result.stderr, 3)}",
            fix=fix,
        )
    return parse_collect_report(result.stdout, where=name)


def collect_outputs(
    conn: Connection,
    workdir: str,
    patterns: Sequence[str],
    *,
    timeout_s: float = 3600.0,
    missing_ok: bool = False,
) -> tuple[str, list[FileEntry]]:
    """:func:`collect`, plus the workdir's absolute path on the host (what rsync needs).

    ``missing_ok``: every pattern may match nothing (what a failed task left); unsafe or
    unreadable files are still refused."""
    name = conn.host.name
    root, files, refusals = collect_report(conn, workdir, patterns, timeout_s=timeout_s)
    if missing_ok:
        refusals = [r for r in refusals if r.kind != "unmatched"]
    if refusals:
        raise IntegrityError(
            f"{name}: " + "; ".join(r.describe() for r in refusals),
            fix="outputs must be regular files inside the task's workdir",
        )
    return root, files


def check_patterns(patterns: Sequence[str], *, what: str = "pattern") -> tuple[str, ...]:
    """``patterns`` unchanged (duplicates dropped) if each could match inside a workdir.

    What can be told without a host is refused here as an InputError naming the
    pattern: empty, a NUL, absolute (``/``, ``~``), a ``..`` part. The host's collect
    program checks the same again, and everything else (symlinks, special files).
    """
    for raw in patterns:
        text = raw[1:] if raw.startswith("?") else raw
        problem = None
        if not text:
            problem = "is empty"
        elif "\0" in text:
            problem = "contains a NUL byte"
        elif text.startswith(("/", "~")):
            problem = "is absolute; patterns are relative to the host's workdir"
        elif ".." in text.split("/"):
            problem = "has a '..' part; files must stay inside the host's workdir"
        elif [part for part in text.split("/") if part not in ("", ".")][:1] == [".meshrun"]:
            problem = "names .meshrun/, meshrun's own directory on the host, which is never pulled"
        if problem:
            raise InputError(
                f"{what} {raw!r} {problem}",
                fix="write a path or glob relative to the workdir, e.g. 'logs/*.log' or "
                "'dist/**' (a leading '?' marks it optional)",
            )
    return tuple(dict.fromkeys(patterns))


def collect(
    conn: Connection, workdir: str, patterns: Sequence[str], *, missing_ok: bool = False
) -> list[FileEntry]:
    """Expand ``patterns`` in ``workdir`` on the host and hash every file there.

    Sorted by path. IntegrityError naming each refused or unmatched pattern (see the
    module docstring; ``missing_ok``: unmatched ones are fine); CommandError when the
    script could not run (no python3, no workdir).
    """
    return collect_outputs(conn, workdir, patterns, missing_ok=missing_ok)[1]


__all__ = [
    "SCRIPT_FILE",
    "Refusal",
    "check_patterns",
    "collect",
    "collect_command",
    "collect_outputs",
    "collect_report",
    "collect_request",
    "collect_source",
    "parse_collect_output",
    "parse_collect_report",
]
