"""Benchmark: the REST server over keep-alive on loopback beside the embedded engine, in one run.

    python bench/server.py [--seconds 5] [--clients 1 8] [--processes 2]

For each client count it measures rank alone and a rank+reward mix (each event ranked,
then both slots rewarded in one call):
- embedded: ``LocalPersonalizer`` called from that many threads in this process;
- HTTP: ``python -m personalizer serve`` in its own process, driven by ``PersonalizerClient``
  (requests.Session, keep-alive) from that many threads spread over ``--processes``
  load-generator processes, so client work does not share the server's GIL. The
  load generator competes with the server for this machine's cores: the numbers are
  for client + server on one box, as a user on a laptop would see them.

Prints a markdown table with p50/p99 latency of rank, requests per second, and HTTP/embedded ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "bench-key"
TIMES = ["morning", "afternoon", "evening", "night"]
DEVICES = ["mobile", "tablet", "desktop"]
# The seed quickstart's catalog, from its one source (read as JSON: client workers stay light).
_SEED = json.loads((ROOT / "personalizer" / "scenarios" / "seed.json").read_text(encoding="utf-8"))


def rank_request(rng: random.Random) -> dict[str, Any]:
    """The seed quickstart's request with a random context."""
    return {
        "contextFeatures": [{"time": rng.choice(TIMES)}, {"device": rng.choice(DEVICES)}],
        "actions": copy.deepcopy(_SEED["actions"]),
        "slots": copy.deepcopy(_SEED["slots"]),
    }


def _drive(backend: Any, seconds: float, mix: bool, seed: int, out: list[tuple[list[float], int]]) -> None:
    """One client: rank (and reward) in a loop; appends (rank latencies, requests made)."""
    rng = random.Random(seed)
    latencies: list[float] = []
    requests_made = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        body = rank_request(rng)
        t0 = time.perf_counter()
        answer = backend.rank(body)
        latencies.append(time.perf_counter() - t0)
        requests_made += 1
        if mix:
            backend.reward(answer["eventId"], {"reward": [
                {"slotId": s["id"], "value": float(rng.random() < 0.5)} for s in answer["slots"]]})
            requests_made += 1
    out.append((latencies, requests_made))


def _run_threads(make_backend: Any, clients: int, seconds: float, mix: bool, seed: int) -> tuple[list[float], int]:
    out: list[tuple[list[float], int]] = []
    backends = [make_backend() for _ in range(clients)]
    _drive(backends[0], min(0.5, seconds / 5), mix, seed - 1, [])  # warm-up: connections, caches
    threads = [threading.Thread(target=_drive, args=(b, seconds, mix, seed + i, out)) for i, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for lat, _ in out for x in lat], sum(n for _, n in out)


class RawClient:
    """A lean keep-alive client on http.client: shows the server's capacity without requests' overhead."""

    def __init__(self, base: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        url = urlsplit(base)
        self._conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        self._headers = {"Ocp-Apim-Subscription-Key": KEY, "Content-Type": "application/json"}
        self._prefix = "/personalizer/v1.1-preview.3"

    def _post(self, path: str, body: Any) -> bytes:
        self._conn.request("POST", self._prefix + path, body=json.dumps(body), headers=self._headers)
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{resp.status}: {data[:200]!r}")
        return data

    def rank(self, request: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self._post("/multislot/rank", request))

    def reward(self, event_id: str, reward: dict[str, Any]) -> None:
        self._post(f"/multislot/events/{event_id}/reward", reward)


def _http_worker(base: str, driver: str, clients: int, seconds: float, mix: bool, seed: int, queue: Any) -> None:
    from personalizer.client import PersonalizerClient

    def make() -> Any:
        return PersonalizerClient(base, KEY, retries=0) if driver == "client" else RawClient(base)

    queue.put(_run_threads(make, clients, seconds, mix, seed))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report server cost per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_http(base: str, pid: int, driver: str, clients: int, processes: int, seconds: float,
                 mix: bool) -> dict[str, float]:
    """Rank latency and request rate over HTTP from ``clients`` threads in ``processes`` processes."""
    processes = max(1, min(processes, clients))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    split = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [ctx.Process(target=_http_worker, args=(base, driver, n, seconds, mix, 1000 * (i + 1), queue))
             for i, n in enumerate(split)]
    cpu0 = _cpu_seconds(pid)
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    cpu = _cpu_seconds(pid) - cpu0  # includes the short warm-up: a slight overestimate
    for p in procs:
        p.join()
    latencies = [x for lat, _ in results for x in lat]
    out = _summary(latencies, sum(n for _, n in results), seconds)
    out["server_cpu_ms"] = cpu * 1000 / max(1, sum(n for _, n in results))
    return out


def measure_embedded(engine: Any, clients: int, seconds: float, mix: bool) -> dict[str, float]:
    """The same loop against the engine in this process (threads share its one lock)."""
    latencies, n = _run_threads(lambda: engine, clients, seconds, mix, 7)
    return _summary(latencies, n, seconds)


def _summary(latencies: list[float], requests_made: int, seconds: float) -> dict[str, float]:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {"p50_ms": statistics.median(latencies) * 1000, "p99_ms": p99 * 1000, "rps": requests_made / seconds}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, python: str) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = _free_port()
    env = {**os.environ, "PERSONALIZER_KEY": KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([python, "-m", "personalizer", "serve", "--port", str(port), "--data", str(data),
                             "--log-level", "warning"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{base}/health", timeout=1).ok:
                return proc, base
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    """Run every cell and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell (default 5)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes for HTTP (default 2)")
    parser.add_argument("--driver", choices=["client", "raw"], default="client",
                        help="HTTP load from PersonalizerClient (requests) or a lean http.client loop")
    parser.add_argument("--server-python", default=sys.executable,
                        help="interpreter for the server (e.g. a venv with uvicorn[standard])")
    args = parser.parse_args()

    from personalizer.engine import LocalPersonalizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = LocalPersonalizer(Path(tmp) / "embedded")
        proc, base = start_server(Path(tmp) / "served", args.server_python)
        extras = subprocess.run([args.server_python, "-c", "import importlib.util as u; print(' '.join(m for m in "
                                 "('httptools', 'uvloop') if u.find_spec(m)) or 'h11, asyncio')"],
                                capture_output=True, text=True).stdout.strip()
        try:
            for mix in (False, True):
                for clients in args.clients:
                    emb = measure_embedded(engine, clients, args.seconds, mix)
                    http = measure_http(base, proc.pid, args.driver, clients, args.processes, args.seconds, mix)
                    rows.append(("rank+reward" if mix else "rank", clients, emb, http))
                    print(f"  measured {rows[-1][0]} x{clients}", file=sys.stderr)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            engine.close()

    driver = "PersonalizerClient (requests, keep-alive)" if args.driver == "client" else "http.client keep-alive"
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}, "
          f"server on uvicorn with {extras}, {args.seconds:g} s per cell, HTTP load: {driver} from "
          f"{args.processes} process(es)\n")
    print("| workload | clients | embedded rank p50 ms | p99 ms | embedded req/s | HTTP rank p50 ms | p99 ms "
          "| HTTP req/s | server CPU ms/req | p50 HTTP/embedded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, clients, emb, http in rows:
        print(f"| {name} | {clients} | {emb['p50_ms']:.3f} | {emb['p99_ms']:.3f} | {emb['rps']:,.0f} "
              f"| {http['p50_ms']:.3f} | {http['p99_ms']:.3f} | {http['rps']:,.0f} | {http['server_cpu_ms']:.2f} "
              f"| {http['p50_ms'] / emb['p50_ms']:.1f}x |")


if __name__ == "__main__":
    main()
