"""Benchmark: the server under issue 8's attacks, each against a baseline measured in the same run.

    python bench/hardening.py [--unique-ranks 600] [--uploads 4] [--upload-mb 250] [--seconds 4]

Runs ``python -m personalizer serve`` in a subprocess on loopback and prints a markdown table:
- ``/health`` latency p50/p99 with the server idle, then while three clients rank the heaviest
  request the compute budget admits back to back (target p99 <= 50 ms), and what the attack request
  (1,200 context features x 50 actions x 50 slots) gets now;
- server RSS before and after N ranks that each carry a unique 1 MB feature string
  (target growth <= 100 MB; the feature cache's byte bound is on the vw-boundary branch);
- peak server RSS (VmHWM) while K clients upload a model of M MB each at once (one is
  processed, the others are refused with 503), beside the RSS before;
- seed-request rank latency and throughput from one lean keep-alive client, beside the README's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_fixtures import HEADERS, KEY, ProcessServer, rank_request, shaped_request  # noqa: E402

from personalizer.contract import MultiSlotRankRequest  # noqa: E402
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS  # noqa: E402
from personalizer.vw import budget  # noqa: E402

RANK = "/personalizer/v1.1-preview.3/multislot/rank"
MODEL = "/personalizer/v1.1-preview.3/model"
#: bench/server.py's numbers in the README (lean driver, 1 client): rank p50 ms and requests/s.
README_RANK_P50_MS = 1.117
README_RANK_RPS = 862


def heaviest_admitted() -> tuple[dict[str, Any], int]:
    n = 1
    while budget.rank_features(MultiSlotRankRequest.model_validate(shaped_request(n + 1)),
                               DEFAULT_POLICY_ARGUMENTS) <= budget.DEFAULT_MAX_RANK_FEATURES:
        n += 1
    request = shaped_request(n)
    return request, budget.rank_features(MultiSlotRankRequest.model_validate(request), DEFAULT_POLICY_ARGUMENTS)


class Conn:
    """A keep-alive http.client connection with the key."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or HEADERS)
        r = self.conn.getresponse()
        return r.status, r.read()


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs) * 1000, xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000


def health_latencies(port: int, seconds: float) -> list[float]:
    conn, out = Conn(port), []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        out.append(time.perf_counter() - t0)
        time.sleep(0.005)
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def bench_health(server: ProcessServer, seconds: float) -> dict[str, Any]:
    idle = percentiles(health_latencies(server.port, seconds))
    heavy, estimate = heaviest_admitted()
    body = json.dumps(heavy).encode()
    stop, durations = threading.Event(), []

    def rank_forever() -> None:
        conn = Conn(server.port)
        while not stop.is_set():
            t0 = time.perf_counter()
            status, _ = conn.request("POST", RANK, body)
            durations.append(time.perf_counter() - t0)
            assert status == 201, status

    rankers = [threading.Thread(target=rank_forever) for _ in range(3)]  # ranks queue up behind each other
    for ranker in rankers:
        ranker.start()
    try:
        busy = percentiles(health_latencies(server.port, seconds))
    finally:
        stop.set()
        for ranker in rankers:
            ranker.join()
    attack = shaped_request(1200, n_actions=50, n_slots=50, per_item=2)
    t0 = time.perf_counter()
    status, answer = Conn(server.port).request("POST", RANK, json.dumps(attack).encode())
    attack_ms = (time.perf_counter() - t0) * 1000
    # Three clients: a round trip is about three ranks (two waited for), so one rank is a third of it.
    return {"idle": idle, "busy": busy, "estimate": estimate, "heavy_ms": statistics.median(durations) * 1000 / 3,
            "heavy_n": len(durations), "attack": (status, json.loads(answer)["error"]["code"], attack_ms)}


def bench_unique_features(server: ProcessServer, n: int) -> tuple[float, float]:
    assert server.proc is not None
    conn = Conn(server.port)
    conn.request("POST", RANK, json.dumps(rank_request()).encode())
    before = rss_mb(server.proc.pid)
    rng = random.Random(1)
    for _ in range(n):
        body = rank_request()
        body["contextFeatures"].append({"blob": "".join(rng.choices("abcdefghij", k=1_000_000))})
        status, text = conn.request("POST", RANK, json.dumps(body).encode())
        assert status == 201, text[:200]
    return before, rss_mb(server.proc.pid)


def bench_uploads(server: ProcessServer, uploads: int, megabytes: int) -> dict[str, Any]:
    assert server.proc is not None
    before = rss_mb(server.proc.pid)
    payload = os.urandom(1024 * 1024) * megabytes  # one buffer shared by the client threads
    statuses: list[int | str] = []
    barrier = threading.Barrier(uploads)

    def upload() -> None:
        conn = Conn(server.port)
        barrier.wait()
        try:
            status, _ = conn.request("PUT", MODEL, payload, {"Ocp-Apim-Subscription-Key": KEY,
                                                              "Content-Type": "application/octet-stream"})
            statuses.append(status)
        except OSError as exc:  # a refused upload's connection may close while the client still sends
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=upload) for _ in range(uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"before": before, "peak": rss_mb(server.proc.pid, "VmHWM"), "statuses": sorted(map(str, statuses))}


def bench_rank(server: ProcessServer, seconds: float) -> tuple[float, float]:
    conn, latencies = Conn(server.port), []
    body = json.dumps(rank_request()).encode()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn.request("POST", RANK, body)
        latencies.append(time.perf_counter() - t0)
    return statistics.median(latencies) * 1000, len(latencies) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--unique-ranks", type=int, default=600)
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--upload-mb", type=int, default=250)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with ProcessServer(Path(tmp) / "health") as server:
            rank_p50, rank_rps = bench_rank(server, args.seconds)
            h = bench_health(server, args.seconds)
        rows.append(("seed rank p50 ms, 1 client (README)", f"{README_RANK_P50_MS:.3f}", f"{rank_p50:.3f}",
                     f"{rank_p50 / README_RANK_P50_MS:.2f}x"))
        rows.append(("seed rank req/s, 1 client (README)", f"{README_RANK_RPS:,}", f"{rank_rps:,.0f}",
                     f"{rank_rps / README_RANK_RPS:.2f}x"))
        rows.append((f"/health p50 / p99 ms: idle vs heaviest admitted rank ({h['estimate'] / 1e6:.1f} M features, "
                     f"{h['heavy_ms']:.0f} ms each, {h['heavy_n']} ranked)", "{:.1f} / {:.1f}".format(*h["idle"]),
                     "{:.1f} / {:.1f}".format(*h["busy"]), "target p99 <= 50"))
        status, code, ms = h["attack"]
        rows.append(("attack rank (1,200 ctx x 50 actions x 50 slots)", "17-40 s (issue)", f"{status} {code} in "
                     f"{ms:.0f} ms", ""))
        with ProcessServer(Path(tmp) / "features") as server:
            before, after = bench_unique_features(server, args.unique_ranks)
        rows.append((f"RSS MB before / after {args.unique_ranks} ranks with a unique 1 MB feature",
                     f"{before:.0f}", f"{after:.0f}", f"+{after - before:.0f} MB (target <= 100)"))
        with ProcessServer(Path(tmp) / "uploads") as server:
            up = bench_uploads(server, args.uploads, args.upload_mb)
        rows.append((f"RSS MB before / peak during {args.uploads} concurrent {args.upload_mb} MB uploads "
                     f"(answers {up['statuses']})", f"{up['before']:.0f}", f"{up['peak']:.0f}",
                     f"+{up['peak'] - up['before']:.0f} MB"))

    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}\n")
    print("| measurement | baseline | now | |")
    print("|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
