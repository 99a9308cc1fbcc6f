"""Trial before use: a new policy or model is first exercised in a child process.

Some learning options that parse fine still crash, abort or freeze VW (``--bag 0``
segfaults; ``--nn 1 --bag 2`` aborts with "free(): invalid size" when its workspace is
freed, i.e. at the next model replacement). In the server's own process that kills
every caller, and a stored policy would kill it again at every start. So before the
live engine builds a new policy or loads an imported model, a fresh interpreter
(``python -m personalizer.vw.trial``) with ``resource`` limits on address space and
CPU time builds or loads it, predicts and learns a few examples shaped like live
traffic, saves, loads the saved bytes into a second workspace (a model replacement),
predicts again and frees both. Any crash, abort, limit or timeout becomes a 400 with
a clear message, and the live engine is untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..contract import PersonalizerError
from . import encoding

#: Address-space limit of the trial child: a policy needing more would bloat the server.
MEMORY_LIMIT_BYTES = 2 * 1024**3
#: CPU-seconds limit of the trial child (the kernel stops it with SIGXCPU).
CPU_LIMIT_SECONDS = 10
#: Wall-clock limit of the whole trial, interpreter start included.
WALL_TIMEOUT_SECONDS = 20.0
#: A single predict slower than this would freeze live ranking: the trial refuses it.
MAX_PREDICT_SECONDS = 2.0


@dataclass(frozen=True)
class TrialExample:
    """One example shaped like live traffic: its unlabeled lines (predict) and labeled lines (learn)."""

    unlabeled: list[str]
    labeled: list[str]


@dataclass(frozen=True)
class TrialReport:
    """What the child measured: VW's own arguments, the saved model's size, seconds per step."""

    arguments: str
    model_bytes: int
    seconds: float
    slowest_predict: float


def examples_from_requests(requests: Sequence[tuple[dict[str, Any], str]]) -> list[TrialExample]:
    """Trial examples from canonical rank requests (as logged) and their event ids.

    Each slot takes the first allowed action no earlier slot took (the contract
    guarantees one), with alternating rewards, so both predict and learn run on
    exactly the lines live traffic produces.
    """
    out = []
    for n, (request, event_id) in enumerate(requests):
        head, bodies, allowed, _ = encoding.encode_request(request, event_id)
        taken: set[int] = set()
        labeled = list(head)
        for k, (body, allow) in enumerate(zip(bodies, allowed, strict=True)):
            pick = next((a for a in allow if a not in taken), allow[0])
            taken.add(pick)
            labeled.append(encoding.slot_line(body, allow, f"{pick}:{-float((n + k) % 2)!r}:0.5"))
        unlabeled = head + [encoding.slot_line(b, a) for b, a in zip(bodies, allowed, strict=True)]
        out.append(TrialExample(unlabeled, labeled))
    return out


def seed_requests() -> list[tuple[dict[str, Any], str]]:
    """Rank requests on the seed catalog (the packaged scenario), one per time of day."""
    seed = json.loads(resources.files("personalizer").joinpath("scenarios/seed.json").read_text("utf-8"))
    devices = seed["context"]["device"]
    requests = []
    for n, time_of_day in enumerate(seed["context"]["time"]):
        request = {"contextFeatures": [{"time": time_of_day}, {"device": devices[n % len(devices)]}],
                   "actions": seed["actions"], "slots": seed["slots"]}
        requests.append((request, f"trial-{n}"))
    return requests


def trial_policy(arguments: str, examples: Sequence[TrialExample] | None = None) -> TrialReport:
    """Exercise policy arguments (already parsed) in a child; InvalidPolicyConfiguration if it fails."""
    return _run({"arguments": arguments}, examples, "InvalidPolicyConfiguration", "the policy")


def trial_model(model: bytes, arguments: str, examples: Sequence[TrialExample] | None = None) -> TrialReport:
    """Exercise model bytes loaded with ``arguments`` in a child; InvalidModelImportFormat if it fails.

    The header is checked here first (no child for a refused header); the child also
    refuses truncated bytes: loaded and saved again, the weights must come back whole.
    """
    from .workspace import read_header  # the parent checks the header before any VW sees the bytes

    read_header(model)
    with tempfile.TemporaryDirectory(prefix="personalizer-trial-") as folder:
        path = Path(folder) / "model.vw"
        path.write_bytes(model)
        return _run({"arguments": arguments, "model_path": str(path)}, examples, "InvalidModelImportFormat",
                    "the model")


def _run(job: dict[str, Any], examples: Sequence[TrialExample] | None, code: str, what: str) -> TrialReport:
    if not examples:
        examples = examples_from_requests(seed_requests())
    job = {**job, "examples": [[e.unlabeled, e.labeled] for e in examples],
           "limits": {"memory": MEMORY_LIMIT_BYTES, "cpu": CPU_LIMIT_SECONDS, "predict": MAX_PREDICT_SECONDS}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONALIZER_")}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="personalizer-trial-cwd-") as cwd:
        try:
            done = subprocess.run([sys.executable, "-m", "personalizer.vw.trial"],
                                  input=json.dumps(job).encode(), capture_output=True, cwd=cwd, env=env,
                                  timeout=WALL_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise PersonalizerError(code, f"{what} did not finish its trial within {WALL_TIMEOUT_SECONDS:g} s "
                                          "(too slow for live traffic)", 400) from None
    answer = _answer(done.stdout)
    if done.returncode < 0:
        raise PersonalizerError(code, f"{what} crashed Vowpal Wabbit in its trial ({_signal_text(-done.returncode)});"
                                      " it was not applied", 400)
    if done.returncode != 0 or answer is None or "error" in answer:
        why = (answer or {}).get("error") or _last_line(done.stderr) or f"exit status {done.returncode}"
        raise PersonalizerError(code, f"{what} failed its trial: {why}", 400)
    return TrialReport(arguments=answer["arguments"], model_bytes=answer["model_bytes"], seconds=answer["seconds"],
                       slowest_predict=answer["slowest_predict"])


def _answer(stdout: bytes) -> dict[str, Any] | None:
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _signal_text(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    why = {"SIGSEGV": "a segmentation fault", "SIGABRT": "an abort", "SIGXCPU": "over its CPU-time limit",
           "SIGKILL": "killed, e.g. over its memory limit", "SIGBUS": "a bus error"}.get(name, "a signal")
    return f"{name}: {why}"


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


# ---------------------------------------------------------------- the child

def _child(job: dict[str, Any]) -> dict[str, Any]:
    """Run in the trial child: limits first, then VW (imported only now, under the limits)."""
    import resource  # Unix only, and only the child needs it

    limits = job["limits"]
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from . import workspace

    started = time.perf_counter()
    arguments = job["arguments"]
    slowest = 0.0
    try:
        if job.get("model_path"):
            model = Path(job["model_path"]).read_bytes()
            header = workspace.read_header(model)
            vw = workspace.load(model, arguments)
            again = workspace.save(vw)
            body, body_again = len(model) - header.size, len(again) - workspace.read_header(again).size
            if body != body_again:
                return {"error": f"the model's weights are incomplete or have trailing bytes ({body} bytes of "
                                 f"weights read, {body_again} saved again): the file is truncated or corrupt"}
        else:
            vw = workspace.build(arguments)
        for unlabeled, labeled in job["examples"]:
            t0 = time.perf_counter()
            workspace.predict(vw, unlabeled)
            slowest = max(slowest, time.perf_counter() - t0)
            workspace.learn(vw, labeled)
        saved = workspace.save(vw)
        replacement = workspace.load(saved, arguments)
        workspace.predict(replacement, job["examples"][0][0])
        reported = workspace.stored_arguments(replacement)
        workspace.finish(vw)
        del vw
        workspace.finish(replacement)
        del replacement
    except PersonalizerError as exc:
        return {"error": exc.message}
    except MemoryError:
        return {"error": f"it needs more than {limits['memory'] // 1024**2} MB of memory"}
    except Exception as exc:  # VW's own refusals arrive as RuntimeError and friends
        text = str(exc).strip().splitlines()
        if any("bad_alloc" in t for t in text):
            return {"error": f"it needs more than {limits['memory'] // 1024**2} MB of memory"}
        return {"error": f"Vowpal Wabbit refused it: {(text or [type(exc).__name__])[0][:300]}"}
    if slowest > limits["predict"]:
        return {"error": f"one prediction took {slowest:.1f} s on an example shaped like live traffic "
                         f"(limit {limits['predict']:g} s)"}
    return {"arguments": reported, "model_bytes": len(saved), "seconds": time.perf_counter() - started,
            "slowest_predict": slowest}


def main() -> int:
    """Child entry point: a JSON job on stdin, one JSON line on stdout."""
    job = json.loads(sys.stdin.buffer.read())
    answer = _child(job)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in answer else 3


if __name__ == "__main__":
    sys.exit(main())
