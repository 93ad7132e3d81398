"""What a person sees of a fleet run: output as chosen, live progress, a summary.

Output goes to stdout (each host's stderr to stderr); progress, notices and the
summary go to stderr. A live status line is drawn only when stderr is a terminal, never
wider than it, and only redrawn when its text changes; it names what runs (as many as
fit), done/total, failures and an ETA. Without a terminal (a CI log) a plain progress
line with the same facts is printed every ``progress_interval_s`` (15 s) while work
runs, so a log is never silent for minutes. Colour only when stderr is a terminal and
``NO_COLOR`` is unset or empty (no-color.org). The console is an observer of fleet
events and is only ever called from the coordinator's thread; log records (any thread)
go through :class:`ConsoleLogHandler`, which erases the status line first.
Plain writes rather than rich: this path runs once per output line and rich's import
alone costs a tenth of a second on every invocation.
"""

from __future__ import annotations

import bisect
import codecs
import enum
import logging
import math
import os
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import field
from typing import TYPE_CHECKING, TextIO

import meshrun
from meshrun import (
    FleetEvent,
    FleetReport,
    HostFinished,
    HostOutput,
    HostProbe,
    HostResult,
    HostStarted,
    HostStatus,
    RunStopping,
    Tick,
    format_duration,
)
from meshrun.config.hostlist import fold
from meshrun.records import record
from meshrun.transport.capture import HeadTail, LineSplitter, tail_text

if TYPE_CHECKING:
    from meshrun import Agent, DispatchReport, DurationRecord, Progress, TaskResult


class OutputMode(enum.Enum):
    STREAM = "stream"  # lines prefixed with the host, as they arrive
    GROUP = "group"  # each host's output as one block when it ends
    FOLD = "fold"  # each distinct output once, under its folded host set, at the end
    NONE = "none"  # nothing but the summary (used with --json)


_STATUS_COLOUR = {
    HostStatus.OK: "32",
    HostStatus.FAILED: "31",
    HostStatus.UNREACHABLE: "35",
    HostStatus.SKIPPED: "33",
    HostStatus.CANCELLED: "33",
}


def colour_enabled(stream: TextIO) -> bool:
    """A terminal, not ``TERM=dumb``, and no non-empty ``NO_COLOR`` (an empty one is
    ignored, as no-color.org says)."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal ``stream`` writes to (asked each time: it can be resized),
    else ``COLUMNS``, else 80."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal, or no file at all
        columns = 0
    if columns <= 0:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
    return columns if columns > 0 else 80


# CSI sequences (colour, erase): they take no room on the screen.
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def _cells(char: str) -> int:
    """Screen columns of one character: 2 for wide East Asian ones, 0 for combining."""
    if char.isascii():
        return 1 if char.isprintable() else 0
    import unicodedata  # only for non-ASCII text

    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` visible columns, ending in ``…`` when cut.

    Escape sequences count for nothing (colour is reset before the ``…``), wide
    characters for two: what matters is what the terminal shows, which must never wrap.
    """
    if text.isascii() and "\x1b" not in text:  # the usual case, in one step
        if len(text) <= width:
            return text
        return text[: width - 1] + "…" if width > 0 else ""
    tokens: list[tuple[str, int]] = []
    position = 0
    for match in _ESCAPE.finditer(text):
        tokens.extend((char, _cells(char)) for char in text[position : match.start()])
        tokens.append((match.group(), 0))
        position = match.end()
    tokens.extend((char, _cells(char)) for char in text[position:])
    if sum(cells for _, cells in tokens) <= width:
        return text
    if width <= 0:
        return ""
    kept: list[str] = []
    used = 0
    for token, cells in tokens:
        if used + cells > width - 1:
            break
        kept.append(token)
        used += cells
    return "".join(kept) + ("\x1b[0m" if "\x1b" in text else "") + "…"


def _columns(text: str) -> int:
    """Screen columns ``text`` takes (no escape sequences in it)."""
    return len(text) if text.isascii() else sum(_cells(char) for char in text)


def clock_text(seconds: float) -> str:
    """An elapsed time or an ETA in whole seconds: ``5s``, ``2m10s``, ``1h05m``.

    Coarser than :func:`format_duration` on purpose: the status line is redrawn only
    when its text changes, and an estimate in hundredths would change every time.
    """
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _eta_text(seconds: float) -> str:
    """An ETA rounded up: something left is never "0s"."""
    return clock_text(math.ceil(seconds))


def pack_names(names: Collection[str], room: int) -> str:
    """``a, b, +3 more``: as many of ``names`` as fit in ``room`` columns, in order, then
    how many were left out. The first name is cut (``…``) rather than left out, so the
    line says what runs; with no room even for that, only how many (``12``)."""
    text = ""
    used = 0
    for index, name in enumerate(names):
        separator = ", " if index else ""
        left = len(names) - index - 1
        more = f", +{left} more" if left else ""
        width = len(separator) + _columns(name)
        if used + width + len(more) <= room:
            text += separator + name
            used += width
            continue
        if index:
            return f"{text}, +{len(names) - index} more"
        if room - len(more) >= 4:  # at least three characters and the "…"
            return fit(name, room - len(more)) + more
        return str(len(names))
    return text


#: Without a terminal: a plain progress line this often while work runs (--progress-interval).
PROGRESS_INTERVAL_S = 15.0
#: How wide a plain progress line may grow. A CI log neither wraps nor redraws, but a line
#: naming hundreds of tasks helps nobody.
PLAIN_WIDTH = 160

# One stderr, one status line on it: a console draws it and erases it before it writes
# anything else; a log record (from any thread) erases it too, under this lock, and the
# console's next update draws it again.
_screen = threading.RLock()
_drawn: _StatusLine | None = None  # the console whose status line is on the screen


class ConsoleLogHandler(logging.StreamHandler[TextIO]):
    """Log records on stderr that do not run into the live status line: it is erased
    before each record, and drawn again by the console's next update."""

    def handle(self, record: logging.LogRecord) -> bool:
        with _screen:  # taken before the handler's own lock, as a console takes it
            if _drawn is not None:
                _drawn._clear_status()
            return super().handle(record)


class _StatusLine:
    """Colour and the one redrawable status line on stderr, shared by the consoles."""

    err: TextIO
    _colour: bool
    _shown: str | None  # the status line on the screen, as drawn; None: none is

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def _show_status(self, line: str, width: int) -> None:
        """Draw ``line`` in place of the last one, one column short of the terminal's
        ``width`` (a line that wrapped could not be erased and would pile up), unless
        exactly that is on the screen already."""
        global _drawn
        text = fit(line, width - 1)
        if text == self._shown:
            return
        self.err.write("\r\x1b[K" + text)
        self.err.flush()
        self._shown = text
        _drawn = self

    def _clear_status(self) -> None:
        global _drawn
        if self._shown is not None:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._shown = None
        if _drawn is self:
            _drawn = None

    def _write(self, target: TextIO, text: str) -> None:
        """Write ``text`` (whole lines) with the status line out of its way."""
        self._clear_status()
        target.write(text)
        target.flush()


def _heartbeat_wanted(
    progress: bool | None, err: TextIO, quiet: bool, interval: float | None
) -> bool:
    """A plain progress line at intervals: when the status line was left to the console
    to decide (``progress`` None) and stderr is no terminal to draw it on."""
    return progress is None and not err.isatty() and not quiet and bool(interval)


@record(frozen=False, slots=False)
class FleetConsole(_StatusLine):
    """Renders fleet events; call ``finish(report)`` at the end."""

    mode: OutputMode = OutputMode.STREAM
    host_names: list[str] = field(default_factory=list)
    quiet: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    progress: bool | None = None  # the status line; None: when stderr is a terminal
    clock: Callable[[], float] = time.monotonic
    #: When stderr is no terminal (and ``progress`` is None): a plain progress line this
    #: often while hosts run; 0 or None: never.
    progress_interval_s: float | None = PROGRESS_INTERVAL_S

    def __post_init__(self) -> None:
        self._width = max((len(n) for n in self.host_names), default=0)
        self._colour = colour_enabled(self.err)
        self._heartbeat = _heartbeat_wanted(
            self.progress, self.err, self.quiet, self.progress_interval_s
        )
        if self.progress is None:
            self.progress = self.err.isatty() and not self.quiet
        self._next_beat: float | None = None
        self._lines: dict[tuple[str, str], LineSplitter] = defaultdict(LineSplitter)
        self._running: list[str] = []
        self._started: dict[str, float] = {}
        self._durations: list[float] = []  # of the hosts that ran their command; sorted
        self._parallel = 0  # the most hosts seen running at once
        self._done = 0
        self._failed = 0
        self._skipped = 0
        self._stopping = False
        self._shown = None

    # -- helpers ------------------------------------------------------------------

    def eta_s(self) -> float | None:
        """Seconds until the last host ends, by the median duration of the hosts that
        ended so far: what the running hosts have left of it, plus that much for each
        host still waiting, spread over as many hosts as have been seen running at once.
        None until a host has ended, and when the running hosts are all past it."""
        if not self._durations:
            return None
        typical = self._durations[len(self._durations) // 2]
        now = self.clock()
        left = [max(0.0, typical - (now - self._started.get(n, now))) for n in self._running]
        waiting = 0
        if not self._stopping:
            waiting = len(self.host_names) - self._done - self._skipped - len(self._running)
        work = sum(left) + max(waiting, 0) * typical
        if work <= 0:
            return None
        eta = max(max(left, default=0.0), work / max(self._parallel, 1))
        if waiting > 0:  # a waiting host starts once a slot frees, then takes its time
            eta = max(eta, min(left, default=0.0) + typical)
        return eta

    def _update(self) -> None:
        """The status line (redrawn only if its text changed), or at the interval the
        plain progress line."""
        if self.progress:
            width = terminal_width(self.err)
            line = f"meshrun: {self._done}/{len(self.host_names)} done"
            if self._failed:
                line += f" · {self._failed} failed"
            eta = self.eta_s()
            if eta is not None:
                line += f" · ETA {_eta_text(eta)}"
            if self._running:
                line += " · running: "
                line += pack_names(self._running, width - 1 - _columns(line))
            self._show_status(line, width)
        elif self._heartbeat:
            self._beat()

    def _beat(self) -> None:
        assert self.progress_interval_s
        now = self.clock()
        if self._next_beat is None:  # the first line comes an interval after the start
            self._next_beat = now + self.progress_interval_s
            return
        # At every interval while hosts run, changed or not: a CI log that stays silent
        # for minutes looks hung (some CI services even stop a job that prints nothing
        # for a while), and the running times say it is not. A line each 15 s is cheap.
        if now < self._next_beat or not self._running:
            return
        self._next_beat = max(self._next_beat + self.progress_interval_s, now)
        line = f"meshrun: {self._done}/{len(self.host_names)} done"
        if self._failed:
            line += f", {self._failed} failed"
        eta = self.eta_s()
        tail = f"; ETA {_eta_text(eta)}" if eta is not None else ""
        running = [f"{n} ({clock_text(now - self._started.get(n, now))})" for n in self._running]
        line += ", running: "
        line += pack_names(running, PLAIN_WIDTH - _columns(line) - len(tail))
        self._write(self.err, line + tail + "\n")

    def _prefix(self, name: str) -> str:
        return self._paint(name.ljust(self._width), "36") + " | "

    def _emit_lines(self, name: str, stream: str, data: bytes, *, flush: bool) -> None:
        splitter = self._lines[(name, stream)]
        lines = splitter.feed(data)
        if flush:
            lines += splitter.flush()
            del self._lines[(name, stream)]
        if not lines:
            return
        target = self.out if stream == "stdout" else self.err
        prefix = self._prefix(name)
        self._write(
            target, "".join(prefix + line.decode("utf-8", "replace") + "\n" for line in lines)
        )

    def _header(self, names: str, result: HostResult, extra: str = "") -> str:
        status = self._paint(result.status.value, _STATUS_COLOUR[result.status])
        code = f" exit {result.exit_code}" if result.exit_code not in (None, 0) else ""
        return (
            f"── {self._paint(names, '1;36')} ({status}{code}, "
            f"{format_duration(result.duration_s)}{extra}) ──\n"
        )

    def _block(self, result: HostResult, names: str | None = None, extra: str = "") -> None:
        self._clear_status()
        self.out.write(self._header(names or result.name, result, extra))
        if result.stdout:
            self.out.write(result.stdout.decode("utf-8", "replace"))
            if not result.stdout.endswith(b"\n"):
                self.out.write("\n")
        if result.stderr:
            self.out.flush()
            self.err.write(result.stderr.decode("utf-8", "replace"))
            if not result.stderr.endswith(b"\n"):
                self.err.write("\n")
            self.err.flush()
        self.out.flush()

    # -- the observer ---------------------------------------------------------------

    def __call__(self, event: FleetEvent) -> None:
        with _screen:
            self._handle(event)
            self._update()

    def _handle(self, event: FleetEvent) -> None:
        if isinstance(event, Tick):
            return  # time passed: the ETA and the running times move on
        if isinstance(event, HostStarted):
            self._running.append(event.name)
            self._started[event.name] = self.clock()
            self._parallel = max(self._parallel, len(self._running))
        elif isinstance(event, HostOutput):
            if self.mode is OutputMode.STREAM and not self.quiet:
                self._emit_lines(event.name, event.stream, event.data, flush=False)
        elif isinstance(event, HostFinished):
            result = event.result
            if result.name in self._running:
                self._running.remove(result.name)
            self._started.pop(result.name, None)
            if result.status in (HostStatus.OK, HostStatus.FAILED):  # ran its command
                bisect.insort(self._durations, result.duration_s)
            elif result.status is HostStatus.SKIPPED:
                self._skipped += 1
            if result.status in (
                HostStatus.OK,
                HostStatus.FAILED,
                HostStatus.UNREACHABLE,
                HostStatus.CANCELLED,
            ):
                self._done += 1
            if result.status in (HostStatus.FAILED, HostStatus.UNREACHABLE):
                self._failed += 1
            if self.quiet:
                pass
            elif self.mode is OutputMode.STREAM:
                for stream in ("stdout", "stderr"):
                    self._emit_lines(result.name, stream, b"", flush=True)
            elif self.mode is OutputMode.GROUP and result.status is not HostStatus.SKIPPED:
                self._block(result)
        elif isinstance(event, RunStopping):
            self._stopping = True  # nothing more starts
            self._write(self.err, self._paint(f"meshrun: {event.reason}", "33") + "\n")

    def finish(self, report: FleetReport) -> None:
        """Folded output (fold mode), then the summary and the failures, on stderr."""
        with _screen:
            self._clear_status()
            if self.mode is OutputMode.FOLD and not self.quiet:
                self._fold(report)
            self._summary(report)

    def _fold(self, report: FleetReport) -> None:
        groups: dict[tuple[bytes, bytes, int | None, HostStatus], list[HostResult]] = {}
        for r in report.results:
            if r.status is HostStatus.SKIPPED or (
                r.status is HostStatus.UNREACHABLE and not r.stdout
            ):
                continue
            groups.setdefault((r.stdout, r.stderr, r.exit_code, r.status), []).append(r)
        for members in groups.values():
            names = fold(m.name for m in members)
            count = f"; {len(members)} hosts" if len(members) > 1 else ""
            slowest = max(members, key=lambda m: m.duration_s)
            self._block(slowest, names, count)

    def _summary(self, report: FleetReport) -> None:
        total = len(report.results)
        parts = [f"{report.count(s)} {s.value}" for s in HostStatus if report.count(s)]
        line = (
            f"meshrun: {total} host{'s' * (total != 1)}: {', '.join(parts)} "
            f"in {format_duration(report.duration_s)}"
        )
        problems = [r for r in report.results if r.status is not HostStatus.OK]
        if self.quiet and not problems:
            return
        self.err.write(self._paint(line, "1") + "\n")
        if report.pull_dir is not None:
            self.err.write(_pulled_line(report) + "\n")
        if not problems:
            self.err.flush()
            return
        width = max(len(r.name) for r in problems)
        by_reason: dict[tuple[HostStatus, str], list[str]] = defaultdict(list)
        for r in problems:
            if r.status in (HostStatus.SKIPPED, HostStatus.CANCELLED):
                by_reason[(r.status, r.error or "")].append(r.name)
                continue
            label = self._paint(r.status.value.ljust(11), _STATUS_COLOUR[r.status])
            reason = r.error or ""
            if r.pull_error and r.pull_error != r.error:
                reason += f"; {r.pull_error}" if reason else r.pull_error
            self.err.write(f"  {r.name.ljust(width)}  {label}  {reason}\n")
            tail = tail_text(r.stderr, 3)
            if r.status is HostStatus.FAILED and tail:
                for tail_line in tail.splitlines():
                    self.err.write(f"  {' ' * width}  {' ' * 11}  │ {tail_line}\n")
        for (ended, reason), names in by_reason.items():
            painted = self._paint(ended.value.ljust(11), _STATUS_COLOUR[ended])
            self.err.write(f"  {fold(names)}  {painted}  {reason}\n")
        self.err.flush()


def _pulled_line(report: FleetReport) -> str:
    """``meshrun: 12 files from 3 hosts in DIR (manifest PATH)``: one line."""
    files = report.files_pulled
    hosts = sum(1 for r in report.results if r.files)
    line = (
        f"meshrun: {files} file{'s' * (files != 1)} from {hosts} host{'s' * (hosts != 1)} "
        f"in {_shown_path(report.pull_dir or '')}"
    )
    if report.manifest_path:
        line += f" (manifest {_shown_path(report.manifest_path)})"
    return line


def _shown_path(path: str) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def render_probes(probes: list[HostProbe]) -> str:
    """The table ``meshrun hosts`` prints."""
    rows = [("HOST", "ADDRESS", "STATUS", "RTT", "CPUS", "LOAD", "PYTHON3", "")]
    for p in probes:
        status = (
            "ok" if p.reachable and p.auth_ok else ("refused" if p.reachable else "unreachable")
        )
        if p.shortage:
            status = "not probed"  # meshrun ran out of descriptors or threads, not the host
        rows.append(
            (
                p.name,
                p.address or "",
                status,
                "" if p.rtt_ms is None else f"{p.rtt_ms:.1f}ms",
                "" if p.cpus is None else str(p.cpus),
                "" if p.load is None else " ".join(f"{x:.2f}" for x in p.load),
                "" if p.python3 is None else ("yes" if p.python3 else "no"),
                p.error or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append(("  ".join(cells) + "  " + row[-1]).rstrip())
    return "\n".join(lines) + "\n"


def render_agents(agents: list[Agent]) -> str:
    """The table ``meshrun discover`` prints."""
    rows = [("NAME", "ADDRESS", "PORT", "USER", "SLOTS", "CPUS", "PLATFORM", "LABELS", "HOST KEY")]
    for a in agents:
        rows.append(
            (
                a.name,
                a.address,
                str(a.port),
                a.user or "",
                str(a.slots),
                str(a.cpus),
                f"{a.os}/{a.arch}",
                ",".join(a.labels),
                a.host_key_fingerprint,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


@record(frozen=False, slots=False)
class DispatchConsole(_StatusLine):
    """Renders a dispatch run: task outputs as chosen, progress, replay, summary.

    ``group`` (default) prints each task's output as one block when it ends, as if it
    had run locally; ``stream`` prefixes each line with its task as it arrives; at the
    end the full logs of failed tasks are replayed, then the summary.
    """

    mode: OutputMode = OutputMode.GROUP
    total: int = 0
    quiet: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    progress: bool | None = None  # the status line; None: when stderr is a terminal
    clock: Callable[[], float] = time.monotonic
    #: When stderr is no terminal (and ``progress`` is None): a plain progress line this
    #: often while the run lasts; 0 or None: never.
    progress_interval_s: float | None = PROGRESS_INTERVAL_S

    def __post_init__(self) -> None:
        self._colour = colour_enabled(self.err)
        self._heartbeat = _heartbeat_wanted(
            self.progress, self.err, self.quiet, self.progress_interval_s
        )
        if self.progress is None:
            self.progress = self.err.isatty() and not self.quiet
        self._next_beat: float | None = None
        # Group mode shows a task's output when it ends: a bounded head and tail of it
        # (the whole of it is in the task's log).
        self._buffers: dict[str, HeadTail] = defaultdict(HeadTail)
        self._lines: dict[tuple[str, str], LineSplitter] = defaultdict(LineSplitter)
        # Running tasks, oldest first: task -> (host, when it started, by this clock).
        # Outputs being brought home count: the task is not done yet.
        self._running: dict[str, tuple[str, float]] = {}
        self._ready: set[str] = set()  # hosts that take tasks
        self._snapshot: Progress | None = None
        self._shown = None

    def _update(self) -> None:
        """The status line (redrawn only if its text changed), or at the interval the
        plain progress line."""
        snap = self._snapshot
        if snap is None:
            return
        if self.progress:
            width = terminal_width(self.err)
            line = f"meshrun: {snap.done}/{snap.total} done"
            if snap.failed:
                line += f" · {snap.failed} failed"
            if snap.eta_s is not None and snap.done < snap.total:  # before what may be cut
                line += f" · ETA {_eta_text(snap.eta_s)}"
            if self._running:
                line += " · running: "
                line += pack_names(self._running.keys(), width - 1 - _columns(line))
            self._show_status(line, width)
        elif self._heartbeat:
            self._beat(snap)

    def _beat(self, snap: Progress) -> None:
        assert self.progress_interval_s
        now = self.clock()
        if self._next_beat is None:  # the first line comes an interval after the start
            self._next_beat = now + self.progress_interval_s
            return
        # At every interval while the run lasts, changed or not: a CI log that stays
        # silent for minutes looks hung (some CI services even stop a job that prints
        # nothing for a while), and the running times say it is not. A line each 15 s
        # is cheap.
        if now < self._next_beat or snap.done >= snap.total:
            return
        self._next_beat = max(self._next_beat + self.progress_interval_s, now)
        line = f"meshrun: {snap.done}/{snap.total} done"
        if snap.failed:
            line += f", {snap.failed} failed"
        tail = f"; ETA {_eta_text(snap.eta_s)}" if snap.eta_s is not None else ""
        if self._running:
            running = [f"{task} ({clock_text(now - t)})" for task, (_, t) in self._running.items()]
            line += ", running: "
            line += pack_names(running, PLAIN_WIDTH - _columns(line) - len(tail))
        else:
            line += ", nothing running" if self._ready else ", no host ready yet"
        self._write(self.err, line + tail + "\n")

    def __call__(self, event: object) -> None:
        with _screen:
            self._handle(event)
            self._update()

    def _handle(self, event: object) -> None:
        # meshrun.X, not an import here: the dispatch side loads on first use (exec
        # never needs it) and is then a plain attribute (an import statement per event
        # was ~10 µs, 0.2 s of a 10,000-task run).
        if isinstance(event, meshrun.Progress):
            self._snapshot = event
        elif isinstance(event, meshrun.TaskStarted):
            self._running.pop(event.task, None)  # moved: it starts again, last
            self._running[event.task] = (event.host, self.clock())
        elif isinstance(event, meshrun.TaskLine):
            if self.mode is OutputMode.STREAM and not self.quiet:
                lines = self._lines[(event.task, event.stream)].feed(event.data)
                if lines:
                    prefix = self._paint(event.task, "36") + " | "
                    self._write(
                        self.out if event.stream == "stdout" else self.err,
                        "".join(prefix + ln.decode("utf-8", "replace") + "\n" for ln in lines),
                    )
            elif self.mode is OutputMode.GROUP:
                self._buffers[event.task].write(event.data)
        elif isinstance(event, meshrun.TaskEnded):
            self._running.pop(event.task, None)
            captured = self._buffers.pop(event.task, None)
            data = captured.value() if captured is not None else b""
            for stream in ("stdout", "stderr"):
                splitter = self._lines.pop((event.task, stream), None)
                rest = splitter.flush() if splitter is not None else []
                if rest and self.mode is OutputMode.STREAM and not self.quiet:
                    self._write(
                        self.out if stream == "stdout" else self.err,
                        "".join(
                            f"{event.task} | {line.decode('utf-8', 'replace')}\n" for line in rest
                        ),
                    )
            if event.status is None:
                self._write(
                    self.err,
                    self._paint(
                        f"meshrun: {event.task} failed on {event.host} ({event.error}); retrying",
                        "33",
                    )
                    + "\n",
                )
            elif (
                self.mode is OutputMode.GROUP
                and not self.quiet
                and (data or event.status is not meshrun.TaskStatus.SUCCEEDED)
            ):
                self._task_block(event.task, event.host, event.status.value, event.duration_s, data)
        elif isinstance(event, meshrun.HostReady):
            self._ready.add(event.name)  # the status line shows what runs; -v, where
        elif isinstance(event, meshrun.HostDown):
            self._ready.discard(event.name)
            if event.ever_ready:  # its tasks go back to the queue
                for task in [t for t, (host, _) in self._running.items() if host == event.name]:
                    del self._running[task]
            word = "lost" if event.ever_ready else "refused" if event.refused else "unreachable"
            self._write(
                self.err,
                self._paint(f"meshrun: {event.name} {word}: {event.reason}", "35") + "\n",
            )
        elif isinstance(event, meshrun.Notice):
            self._write(self.err, self._paint(f"meshrun: {event.text}", "33") + "\n")

    def _task_block(
        self, task: str, host: str | None, status: str, duration_s: float, data: bytes
    ) -> None:
        where = f" on {host}" if host else ""
        colour = {"succeeded": "32", "failed": "31"}.get(status, "33")
        self._clear_status()
        self.out.write(
            f"── {self._paint(task, '1;36')} ({self._paint(status, colour)}{where}, "
            f"{format_duration(duration_s)}) ──\n"
        )
        if data:
            self.out.write(data.decode("utf-8", "replace"))
            if not data.endswith(b"\n"):
                self.out.write("\n")
        self.out.flush()

    def finish(self, report: DispatchReport) -> None:
        """Replay the full logs of failed tasks, then the summary, on stderr."""
        with _screen:
            self._clear_status()
            self._finish(report)

    def _finish(self, report: DispatchReport) -> None:
        from meshrun import TaskStatus

        failed = [t for t in report.tasks if t.status is TaskStatus.FAILED]
        if failed and not self.quiet:
            self.err.write(self._paint("meshrun: output of failed tasks:", "1") + "\n")
            for t in failed:
                # What ended it: its exit code, or the reason when that is not one
                # (timed out, outputs refused after exit 0, host lost).
                how = f"exit {t.exit_code}"
                if t.error and t.error != f"exit code {t.exit_code}":
                    how = t.error
                self.err.write(
                    f"── {self._paint(t.name, '1;31')} (on {t.host}, {how}, "
                    f"attempt {t.attempts}) ── {t.log}\n"
                )
                _replay_log(t, self.err)
        if self.quiet and report.exit_code == 0:
            return
        counts: dict[str, int] = defaultdict(int)
        for t in report.tasks:
            counts[t.status.value] += 1
        parts = ", ".join(f"{n} {s}" for s, n in counts.items()) or "nothing to run"
        self.err.write(
            self._paint(
                f"meshrun: {len(report.tasks)} tasks: {parts} in "
                f"{format_duration(report.duration_s)} (run {report.run_id})",
                "1",
            )
            + "\n"
        )
        # Named first: a refused host (a changed key may be an attack) fails the run even
        # when the other hosts did all the work.
        for h in report.refused_hosts:
            self.err.write(f"  host {h.name}  {self._paint('refused', '1;31')}  {h.error or ''}\n")
        for t in report.tasks:
            if t.status is not TaskStatus.SUCCEEDED:
                colour = "31" if t.status is TaskStatus.FAILED else "33"
                self.err.write(
                    f"  {t.name}  {self._paint(t.status.value, colour)}  {t.error or ''}\n"
                )
        for h in report.hosts:
            if h.status in ("lost", "unreachable") and not h.refused:
                self.err.write(f"  host {h.name}  {self._paint(h.status, '35')}  {h.error or ''}\n")
        self.err.write(_where_logs_are(report) + "\n")
        self.err.flush()


def _where_logs_are(report: DispatchReport) -> str:
    """The summary's last line: where to look. The logs of tasks that ran and did not
    succeed (each a file of its own) first; else the one file that holds the output of
    succeeded tasks, one slice each (report.json says which: log_offset, log_bytes)."""
    from meshrun import TaskStatus

    logs = f"{report.run_dir}/logs"
    own = [
        t
        for t in report.tasks
        if t.status is not TaskStatus.SUCCEEDED and t.attempts and t.log_offset is None
    ]
    if len(own) == 1:
        return f"meshrun: log of {own[0].name}: {own[0].log}"
    if own:
        return f"meshrun: logs of the {len(own)} tasks that did not succeed: {logs}/<task>.log"
    return (
        f"meshrun: output of succeeded tasks: {logs}/succeeded.log, a slice each "
        f"(log_offset, log_bytes in {report.run_dir}/report.json)"
    )


def _replay_log(task: TaskResult, out: TextIO) -> None:
    """Copy a task's log (its file, or its slice of the shared one) to ``out`` a chunk
    at a time (a log may be larger than memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    last = "\n"
    try:
        for chunk in task.log_chunks():
            text = decoder.decode(chunk)
            if text:
                out.write(text)
                last = text[-1]
    except OSError:
        out.write("(no log)\n")
        return
    text = decoder.decode(b"", final=True)
    if text:
        out.write(text)
        last = text[-1]
    if last != "\n":
        out.write("\n")


def render_history(records: list[DurationRecord]) -> str:
    """The table ``meshrun history`` prints."""
    if not records:
        return "no task durations recorded yet\n"
    width = max(len("TASK"), *(len(r.task) for r in records))
    lines = [f"{'TASK'.ljust(width)}  {'EXPECTED':>9}  {'LAST':>9}  {'RUNS':>5}"]
    for r in records:
        lines.append(
            f"{r.task.ljust(width)}  {format_duration(r.estimate_s):>9}  "
            f"{format_duration(r.last_s):>9}  {r.samples:>5}"
        )
    return "\n".join(lines) + "\n"
