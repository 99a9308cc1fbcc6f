"""One background job runner for the engine's long jobs (offline evaluations, feature importances).

Why one runner: both jobs replay the log through Vowpal Wabbit, which is CPU-bound and
uses the engine's shared state, so they run one at a time on a single worker of a
``ThreadPoolExecutor``; both report progress, can be cancelled, are waited on, and
are kept as JSON rows in the engine's database (``JobRecords``: ``records(kind)``,
``save_record``, ``delete_record``). The managers own their records, validation and
wire shapes; this module owns the worker, the state changes and the stored rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from .contract import PersonalizerError
from .interface import JobRecords

log = logging.getLogger(__name__)

__all__ = ["PREPARED", "Job", "JobRunner", "has_logged_events", "stored_jobs"]


class Job(Protocol):
    """What the runner needs of a job: its id, state, progress and two events."""

    id: str
    status: str
    message: str
    progress: float
    cancel: threading.Event
    done: threading.Event


J = TypeVar("J", bound=Job)
T = TypeVar("T")

#: Share of the progress bar the job's preparation (reading the log) stands for.
PREPARED = 0.1


class JobRunner(Generic[J]):
    """Runs the jobs of one manager, one at a time, on a single worker thread.

    ``jobs`` is the manager's id -> job mapping, guarded by ``lock``; ``work(job)``
    does the job (and sets its result), raising ``cancelled`` when ``job.cancel`` is
    set; ``save(job)`` writes a finished job's row (only while the job is still in
    ``jobs``, so a deleted job is not written back).
    """

    def __init__(self, name: str, lock: threading.RLock, jobs: MutableMapping[str, J],
                 work: Callable[[J], None], save: Callable[[J], None],
                 cancelled: type[BaseException]) -> None:
        self._name = name
        self._lock = lock
        self._jobs = jobs
        self._work = work
        self._save = save
        self._cancelled = cancelled
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, job_id: str) -> None:
        """Queue a pending job (no-op after ``close``)."""
        with self._lock:
            if self._closed:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            self._executor.submit(self._run, job_id)

    @staticmethod
    def progress(job: J) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback filling the bar after the preparation's share."""
        def report(done: int, total: int) -> None:
            job.progress = PREPARED + (1 - PREPARED) * done / total if total else 1.0
        return report

    @staticmethod
    def cancel(job: J) -> None:
        """Ask a job to stop (a running replay stops at its next check)."""
        job.cancel.set()

    @staticmethod
    def wait(job: J, timeout: float | None = None) -> bool:
        """Block until the job finished (or ``timeout``); True if it did."""
        return job.done.wait(timeout)

    def finish(self, job: J, status: str, message: str) -> None:
        """Record the job's end state, write its row while it still exists, and wake its waiters."""
        with self._lock:
            job.status, job.message, job.progress = status, message, 1.0
            if job.id in self._jobs:
                self._save(job)
        job.done.set()

    def close(self) -> None:
        """Stop the worker; pending and running jobs are cancelled (they run again on the next start)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if job.status in ("pending", "running"):
                    job.cancel.set()
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "pending" or job.cancel.is_set():
                return
            job.status = "running"
        try:
            self._work(job)
        except self._cancelled:
            job.done.set()
            return
        except PersonalizerError as exc:
            self.finish(job, "failed", f"{exc.code}: {exc.message}")
            return
        except Exception as exc:  # a background job records its failure instead of raising
            log.exception("job %s failed unexpectedly", job_id)  # not a refusal: keep the traceback
            self.finish(job, "failed", f"{type(exc).__name__}: {exc}")
            return
        self.finish(job, "succeeded", "")


def stored_jobs(store: JobRecords, kind: str, parse: Callable[[str, str], T],
                set_aside: Callable[[str, Exception], None]) -> Iterator[T]:
    """The jobs stored under ``kind``, parsed by ``parse(id, text)``; a row that fails goes to ``set_aside``."""
    for job_id, text in store.records(kind):
        try:
            job = parse(job_id, text)
        except Exception as exc:  # one bad record must not stop the others from loading
            set_aside(job_id, exc)
            continue
        yield job


def has_logged_events(events: Any) -> bool:
    """True if ``events`` (an iterable of logged events) holds one with a reward that can be replayed."""
    iterator = iter(events)
    try:
        return any(ev.labels is not None and ev.status not in ("pending", "discarded") for ev in iterator)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # a generator reading the log releases its connection now
