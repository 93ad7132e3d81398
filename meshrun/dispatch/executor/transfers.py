"""Files around an attempt: the outputs of a task's needs pushed to its host before its
command starts (staging), and its own outputs brought home, verified, after it ends
(collecting).

Both run off the coordinator's thread, so a big transfer holds up no other task, and
report through the run's queue (``Staged``, ``Collected``). The attempt keeps its slot
meanwhile: a task counts as done only once its outputs are home.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.config.sizes import format_size
from meshrun.config.tasks import Task, TaskGraph
from meshrun.dispatch.executor.attempts import AttemptEnd
from meshrun.dispatch.executor.hosts import SHORTAGE_GIVE_UP_S, SHORTAGE_RETRY_S, Later
from meshrun.dispatch.scheduler import TaskFailed, TaskRecord, TaskSucceeded
from meshrun.errors import IntegrityError, MeshrunError, in_context
from meshrun.integrity.manifest import FileEntry
from meshrun.records import record

#: One logger for the whole executor: ``-v`` shows its records, each naming its host.
log = logging.getLogger("meshrun.dispatch.executor")

#: Collects a task's outputs on its host and brings them home, verified.
#: ``succeeded`` False: the task failed; what it left is brought home all the same (a
#: failing test report is the file a CI run needs most), and missing outputs are no error.
CollectFn = Callable[[Host, Task, bool], tuple[FileEntry, ...]]
#: Pushes needs' outputs (need name, its verified files) to a host; returns bytes sent.
StageFn = Callable[[Host, Sequence[tuple[str, tuple[FileEntry, ...]]]], int]

_T = TypeVar("_T")

#: What a task's needs left that its host must have first: (need, its files).
Inputs = list[tuple[str, tuple[FileEntry, ...]]]


@record
class Collected:
    """Outputs of a finished task came home (``files``) or could not (``error``)."""

    task_id: str
    files: tuple[FileEntry, ...]
    error: str | None = None
    integrity: bool = False


@record
class Staged:
    """A task's inputs reached its host (``error`` None) or could not."""

    task_id: str
    sent_bytes: int = 0
    error: str | None = None
    integrity: bool = False


class Transfers:
    """The run's transfers, the outputs that came home, and the tasks whose files
    failed verification."""

    def __init__(
        self,
        graph: TaskGraph,
        put: Callable[[Collected | Staged], None],
        *,
        collect: CollectFn | None,
        stage: StageFn | None,
        prior_outputs: Mapping[str, tuple[FileEntry, ...]],
        later: Later,
    ) -> None:
        self._later = later
        self._graph = graph
        self._put = put
        self._collect = collect
        self._stage = stage
        self._prior = prior_outputs
        self._collecting: dict[str, AttemptEnd] = {}  # runner task id -> how it ended
        self.threads: list[threading.Thread] = []
        self.files: dict[str, tuple[FileEntry, ...]] = {}  # task -> its outputs, home
        self.integrity: list[str] = []  # tasks whose files failed verification (repeats)

    # -- before: staging -----------------------------------------------------------------

    def inputs(self, task: Task, host: str, records: Mapping[str, TaskRecord]) -> Inputs:
        """What must reach ``host`` before ``task`` runs there: outputs of needs that
        ran elsewhere, and of needs that passed in an earlier run (a rerun); nothing
        when this run pushes no outputs."""
        if self._stage is None:
            return []
        return [
            (need, self.files[need])
            for need in task.needs
            if self.files.get(need) and records[need].host != host
        ] + [
            (need, self._prior[need])
            for need in self._graph.done_needs.get(task.name, ())
            if self._prior.get(need)
        ]

    def stage(self, task_id: str, host: Host, inputs: Inputs) -> None:
        """Push ``inputs`` to ``host`` off this thread; a Staged comes back."""
        task = task_id.rpartition("#")[0]
        self._spawn(self._push_inputs, (task_id, host, inputs), f"meshrun-stage-{task}")

    def _push_inputs(self, task_id: str, host: Host, inputs: Inputs) -> None:
        stage = self._stage
        assert stage is not None
        task, needs = task_id.rpartition("#")[0], ", ".join(need for need, _ in inputs)
        log.info("%s: pushing the outputs of %s for %s", host.name, needs, task)
        began = time.monotonic()
        try:
            sent = _patiently(lambda: stage(host, inputs), f"pushing {task}'s inputs")
        except IntegrityError as exc:
            log.info("%s: the inputs of %s failed verification", host.name, task)
            self._put(Staged(task_id, error=str(exc), integrity=True))
        except MeshrunError as exc:
            log.info("%s: the inputs of %s could not be pushed: %s", host.name, task, exc)
            error = in_context("pushing its inputs failed", str(exc), host=host.name)
            self._put(Staged(task_id, error=error))
        except Exception as exc:  # a bug must not leave the task staging forever
            log.exception("%s: pushing the inputs of %s failed", host.name, task)
            self._put(Staged(task_id, error=f"internal error: {exc!r}"))
        else:
            took = time.monotonic() - began
            log.info(
                "%s: inputs of %s pushed: %s in %.2fs", host.name, task, format_size(sent), took
            )
            self._put(Staged(task_id, sent_bytes=sent))

    # -- after: collecting ---------------------------------------------------------------

    def collects(self, task: Task, outcome: TaskSucceeded | TaskFailed) -> bool:
        """Whether an ended attempt's outputs come home before the scheduler hears of
        it: a success's outputs, and what a failure left of its ``outputs``."""
        if self._collect is None:
            return False
        if isinstance(outcome, TaskSucceeded):
            return bool(task.outputs or task.outputs_on_success)
        return bool(task.outputs)

    def collect(self, end: AttemptEnd, host: Host) -> None:
        """Bring the outputs of ``end`` home off this thread; a Collected comes back."""
        self._collecting[end.task_id] = end
        task = self._graph.tasks[end.attempt.task]
        succeeded = isinstance(end.outcome, TaskSucceeded)
        self._spawn(
            self._bring_home, (end.task_id, host, task, succeeded), f"meshrun-collect-{task.name}"
        )

    def _bring_home(self, task_id: str, host: Host, task: Task, succeeded: bool) -> None:
        collect = self._collect
        assert collect is not None
        log.info("%s: bringing the outputs of %s home", host.name, task.name)
        began = time.monotonic()
        try:
            files = _patiently(
                lambda: collect(host, task, succeeded), f"collecting {task.name}'s outputs"
            )
        except IntegrityError as exc:
            log.info("%s: the outputs of %s failed verification", host.name, task.name)
            self._put(Collected(task_id, (), str(exc), integrity=True))
        except MeshrunError as exc:
            log.info("%s: the outputs of %s did not come home: %s", host.name, task.name, exc)
            error = in_context("collecting outputs failed", str(exc), host=host.name)
            self._put(Collected(task_id, (), error))
        except Exception as exc:  # a bug must not leave the task running forever
            log.exception("%s: collecting the outputs of %s failed", host.name, task.name)
            self._put(Collected(task_id, (), f"internal error: {exc!r}"))
        else:
            took = time.monotonic() - began
            size = format_size(sum(f.size for f in files))
            log.info(
                "%s: outputs of %s home: %d file%s, %s in %.2fs",
                host.name,
                task.name,
                len(files),
                "s" * (len(files) != 1),
                size,
                took,
            )
            self._put(Collected(task_id, files))

    def collected(self, item: Collected) -> AttemptEnd:
        """How the attempt ended, now that its outputs came home or could not. A failed
        attempt stays failed (what it left is kept, or why not is added); a succeeded
        one whose outputs failed fails with that error, not an exit code."""
        end = self._collecting.pop(item.task_id)
        task, host = end.attempt.task, end.attempt.host
        if isinstance(end.outcome, TaskFailed):
            self.files[task] = item.files
            if item.integrity:
                self.integrity.append(task)
            failed = end.outcome
            if item.error is not None:
                failed = replace(failed, error=f"{failed.error}; {item.error}")
            return replace(end, outcome=failed, exit_code=failed.exit_code)
        outcome: TaskSucceeded | TaskFailed
        if item.error is None:
            self.files[task] = item.files
            outcome = TaskSucceeded(
                task,
                host,
                end.duration_s,
                output_files=len(item.files),
                output_bytes=sum(f.size for f in item.files),
            )
        else:
            if item.integrity:
                self.integrity.append(task)
            outcome = TaskFailed(task, host, 0, item.error)
        return replace(end, outcome=outcome, exit_code=0)

    def _spawn(self, target: Callable[..., None], args: tuple[object, ...], name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread: once some end
            if resources.exhaustion(exc) is None:
                raise
            log.info("%s: no thread to start (%s); again in %gs", name, exc, SHORTAGE_RETRY_S)
            self._later(SHORTAGE_RETRY_S, lambda: self._spawn(target, args, name))
            return
        self.threads.append(thread)


def _patiently(transfer: Callable[[], _T], doing: str) -> _T:
    """Run ``transfer``; while it fails for want of this process's fds, threads or
    memory (not the host's fault, nor the task's), try again every SHORTAGE_RETRY_S, for
    at most SHORTAGE_GIVE_UP_S; then ResourceExhausted (a MeshrunError) says what ran
    out."""
    deadline = time.monotonic() + SHORTAGE_GIVE_UP_S
    while True:
        try:
            return transfer()
        except Exception as exc:
            shortage = resources.resource_error(exc, doing)
            if shortage is None:
                raise
            if time.monotonic() >= deadline:
                raise shortage from exc
            log.info("%s; trying again in %gs", shortage, SHORTAGE_RETRY_S)
            time.sleep(SHORTAGE_RETRY_S)
