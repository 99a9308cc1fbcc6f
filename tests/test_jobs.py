"""The one job runner both managers use: one worker, finish states, cancel, close, stored rows."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.jobs import JobRunner, stored_jobs


class Stop(Exception):
    """The cancellation the work raises."""


@dataclass
class Task:
    id: str
    status: str = "pending"
    message: str = ""
    progress: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def _runner(tasks: dict[str, Task], saved: list[tuple[str, str]], gate: threading.Event,
            started: threading.Event | None = None) -> JobRunner[Task]:
    running = threading.Lock()  # held by a running task: a second concurrent one would fail to take it

    def work(task: Task) -> None:
        if not running.acquire(blocking=False):
            raise AssertionError("two jobs ran at once")
        try:
            if task.id == "blocked":
                if started is not None:
                    started.set()
                gate.wait(10)
                if task.cancel.is_set():
                    raise Stop
            if task.id == "bad":
                raise PersonalizerError("NoLogsExistInDateRange", "nothing to replay")
            if task.id == "bug":
                raise KeyError("oops")
            JobRunner.progress(task)(1, 2)
        finally:
            running.release()

    return JobRunner("test-jobs", threading.RLock(), tasks, work,
                     lambda t: saved.append((t.id, t.status)), Stop)


def test_jobs_run_one_at_a_time_and_record_how_they_ended() -> None:
    tasks = {i: Task(i) for i in ("ok", "bad", "bug", "ok2")}
    saved: list[tuple[str, str]] = []
    runner = _runner(tasks, saved, threading.Event())
    for task_id in tasks:
        runner.submit(task_id)
    assert all(runner.wait(t, 10) for t in tasks.values())
    runner.close()
    assert [(t.id, t.status) for t in tasks.values()] == [
        ("ok", "succeeded"), ("bad", "failed"), ("bug", "failed"), ("ok2", "succeeded")]
    assert tasks["bad"].message == "NoLogsExistInDateRange: nothing to replay"
    assert tasks["bug"].message.startswith("KeyError")
    assert all(t.progress == 1.0 for t in tasks.values())
    assert saved == [(t.id, t.status) for t in tasks.values()]


def test_close_cancels_running_and_pending_jobs_without_recording_them() -> None:
    tasks = {"blocked": Task("blocked"), "next": Task("next")}
    saved: list[tuple[str, str]] = []
    gate, started = threading.Event(), threading.Event()
    runner = _runner(tasks, saved, gate, started)
    runner.submit("blocked")
    runner.submit("next")
    assert started.wait(10)
    closer = threading.Thread(target=runner.close)
    closer.start()
    assert tasks["blocked"].cancel.wait(10)  # close asked it to stop before it could finish
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert tasks["blocked"].done.is_set() and tasks["blocked"].status == "running"  # runs again on restart
    assert tasks["next"].status == "pending" and saved == []
    runner.submit("next")  # after close: a no-op
    assert tasks["next"].status == "pending"


def test_a_deleted_job_is_not_written_back() -> None:
    tasks = {"blocked": Task("blocked")}
    saved: list[tuple[str, str]] = []
    gate, started = threading.Event(), threading.Event()
    runner = _runner(tasks, saved, gate, started)
    runner.submit("blocked")
    assert started.wait(10)
    job = tasks.pop("blocked")
    gate.set()
    assert runner.wait(job, 10)
    runner.close()
    assert job.status == "succeeded" and saved == []


def test_stored_jobs_skip_a_bad_row(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path) as engine:
        engine.save_record("featureImportance", "a", 1.0, '{"n": 1}')
        engine.save_record("featureImportance", "b", 2.0, "not json")
        engine.save_record("featureImportance", "c", 3.0, '{"n": 3}')
        aside: list[str] = []

        rows = list(stored_jobs(engine, "featureImportance", lambda _id, text: json.loads(text)["n"],
                                lambda job_id, _exc: aside.append(job_id)))
    assert rows == [1, 3] and aside == ["b"]
