"""What long runs cost per request: a comparison of two 100k-step jobs.

Builds the real app in-process (no network, one request at a time) on SQLite and, when
a URL is given, PostgreSQL; stores `--steps` steps of five metrics a step for each of
the comparison's two jobs (plus a validation loss every 500 steps and the optimizer
state size every 1000) through `service.repo.insert_points`, 200 steps an upload as the
engine sends them, and times

- `GET /v1/jobs/{id}/metrics?max_points=1000` (every metric of one job),
- `GET /v1/comparisons/{id}` (the summary the dashboard polls),
- `GET /v1/comparisons/{id}/plot.png`,
- `GET /v1/jobs/{id}` (a status poll) while `--ingest-jobs` other jobs each store
  `--ingest-rate` steps a second (five metrics a step) from a background thread.

Each read is repeated `--repeat` times; medians (and the poll p99) are printed. The poll
phase is one in-process client, not the 50 loopback clients of bench/service_load.py.
Targets: history and summary < 50 ms, plot < 300 ms, poll p99 < 50 ms. The last line is

    history_ms=X summary_ms=Y plot_ms=Z poll_p99_ms=W

for SQLite. `--million` adds a third job of 1M steps and times its history too.

    python bench/long_runs.py [--steps 100000] [--postgres-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADMIN = "alto_bench_admin_token"
SPEC = {
    "name": "long",
    "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16},
    "training": {"steps": 10, "global_batch_size": 8, "micro_batch_size": 4},
    "optimizer": {"name": "adamw"},
}
PER_STEP = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "mem/peak_rss_bytes")
UPLOAD_STEPS = 200


class StillCluster:
    """A cluster the scheduler never runs against (it is off): the jobs stay pending."""

    def capacity(self):
        from service.cluster import ClusterCapacity

        return ClusterCapacity(nodes=[{"CPU": 1e9}])

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        raise AssertionError("the bench submits nothing")

    def state(self, submission_id: str):
        return None

    def stop(self, submission_id: str) -> None:
        pass

    def logs(self, submission_id: str) -> str:
        return ""

    def ping(self) -> bool:
        return True


def step_points(step: int, job: int) -> list[tuple[int, str, float, float]]:
    """One step's points of bench job `job`: a decaying, noisy loss and so on."""
    t = 1000.0 + step * 0.5
    noise = math.sin(step * 12.9898 + job) * 0.05
    loss = 2.0 + 8.0 / math.sqrt(1.0 + step / 50.0) + noise - 0.01 * job
    out = [
        (step, "train/loss", loss, t),
        (step, "train/lr", 3e-4 * min(1.0, step / 2000.0), t),
        (step, "train/grad_norm", 1.0 + noise, t),
        (step, "train/tokens_per_s", 50_000.0 + 1000.0 * noise + (job * 500.0), t),
        (step, "mem/peak_rss_bytes", 2e9 + (step % 977) * 1e3, t),
    ]
    if step % 500 == 0:
        out.append((step, "val/loss", loss + 0.1, t))
    if step % 1000 == 1:
        out.append((step, "optim/state_bytes", 4e7 * (1.5 if job else 1.0), t))
    return out


def fill(factory, seq: int, steps: int, job: int) -> float:
    """Store `steps` steps of job `seq`, an upload at a time; returns points per second."""
    from service.repo import insert_points

    n = 0
    start = time.perf_counter()
    for lo in range(1, steps + 1, UPLOAD_STEPS):
        batch = [
            p for st in range(lo, min(lo + UPLOAD_STEPS, steps + 1)) for p in step_points(st, job)
        ]
        with factory() as s:
            n += insert_points(s, seq, batch)
            s.commit()
    return n / (time.perf_counter() - start)


CPU_MS: dict[int, list[float]] = {}


def timed(fn, repeat: int) -> list[float]:
    """Wall-clock ms of `repeat` calls; the process CPU ms of each go to CPU_MS (on a
    busy machine the CPU time is what the request itself cost)."""
    out, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    CPU_MS[id(out)] = cpu
    return out


def cpu_median(wall: list[float]) -> float:
    return statistics.median(CPU_MS[id(wall)])


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def run(label: str, database_url: str | None, args: argparse.Namespace) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db.tables import JobRow
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="alto-long-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=database_url,
            admin_token=ADMIN,
            public_url="http://127.0.0.1:9",
        )
        app = create_app(settings, backend=StillCluster(), start_scheduler=False)
        factory = app.state.svc.factory
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with TestClient(app) as client:
            r = client.post(
                "/v1/comparisons",
                json={
                    "spec": SPEC,
                    "arms": [
                        {"name": "adamw", "optimizer": {"name": "adamw"}},
                        {"name": "alto", "optimizer": {"name": "alto"}},
                    ],
                    "seeds": [0],
                    "baseline": "adamw",
                },
                headers=auth,
            )
            assert r.status_code == 202, r.text
            comparison = r.json()
            job_ids = [j for arm in comparison["arms"] for j in arm["job_ids"]]
            with factory() as s:
                seqs = {
                    jid: s.query(JobRow.seq).filter(JobRow.id == jid).scalar() for jid in job_ids
                }
            rates = [fill(factory, seqs[jid], args.steps, i) for i, jid in enumerate(job_ids)]
            print(
                f"[{label}] stored 2 x {args.steps} steps at "
                f"{statistics.fmean(rates):,.0f} points/s",
                flush=True,
            )

            def get(url: str) -> None:
                resp = client.get(url, headers=auth)
                assert resp.status_code == 200, resp.text

            history = timed(
                lambda: get(f"/v1/jobs/{job_ids[0]}/metrics?max_points=1000"), args.repeat
            )
            summary = timed(lambda: get(f"/v1/comparisons/{comparison['id']}"), args.repeat)
            plot = timed(lambda: get(f"/v1/comparisons/{comparison['id']}/plot.png"), args.repeat)
            out = {
                "history_ms": statistics.median(history),
                "summary_ms": statistics.median(summary),
                "plot_ms": statistics.median(plot),
            }
            print(
                f"[{label}] medians, wall (cpu): history {out['history_ms']:.1f} "
                f"({cpu_median(history):.1f}) ms, summary {out['summary_ms']:.1f} "
                f"({cpu_median(summary):.1f}) ms, plot {out['plot_ms']:.1f} "
                f"({cpu_median(plot):.1f}) ms; load average {os.getloadavg()[0]:.1f} "
                f"on {os.cpu_count()} cores",
                flush=True,
            )
            out["poll_p99_ms"] = poll_phase(label, client, factory, auth, job_ids[0], args)
            if args.million:
                r = client.post("/v1/jobs", json={**SPEC, "name": "million"}, headers=auth)
                assert r.status_code == 202, r.text
                big = r.json()["id"]
                with factory() as s:
                    big_seq = s.query(JobRow.seq).filter(JobRow.id == big).scalar()
                rate = fill(factory, big_seq, 1_000_000, 0)
                big_history = timed(
                    lambda: get(f"/v1/jobs/{big}/metrics?max_points=1000"), args.repeat
                )
                out["million_history_ms"] = statistics.median(big_history)
                print(
                    f"[{label}] 1M steps stored at {rate:,.0f} points/s; 1000-point history "
                    f"median {out['million_history_ms']:.1f} ms",
                    flush=True,
                )
    return out


def poll_phase(label, client, factory, auth, job_id, args) -> float:
    """Status polls of one job while `--ingest-jobs` jobs store `--ingest-rate` steps/s."""
    from service.db.tables import JobRow
    from service.repo import insert_points

    seqs = []
    for i in range(args.ingest_jobs):
        r = client.post("/v1/jobs", json={**SPEC, "name": f"ingest{i}"}, headers=auth)
        assert r.status_code == 202, r.text
        with factory() as s:
            seqs.append(s.query(JobRow.seq).filter(JobRow.id == r.json()["id"]).scalar())
    stop = threading.Event()

    def ingest() -> None:
        step = 0
        while not stop.is_set():
            tick = time.monotonic()
            step += 1
            for seq in seqs:  # each job uploads its step's points, as the engine would
                with factory() as s:
                    insert_points(s, seq, step_points(step, 0))
                    s.commit()
            stop.wait(max(0.0, 1.0 / args.ingest_rate - (time.monotonic() - tick)))

    thread = threading.Thread(target=ingest, daemon=True)
    thread.start()
    latencies = []
    deadline = time.monotonic() + args.poll_seconds
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            resp = client.get(f"/v1/jobs/{job_id}", headers=auth)
            latencies.append((time.perf_counter() - start) * 1000.0)
            assert resp.status_code == 200, resp.text
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    print(
        f"[{label}] status poll while {args.ingest_jobs} jobs ingest at {args.ingest_rate} "
        f"steps/s: median {statistics.median(latencies):.1f} ms, p99 {p99(latencies):.1f} ms "
        f"({len(latencies)} polls)",
        flush=True,
    )
    return p99(latencies)


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "DROP TABLE IF EXISTS metric_rollups, metric_points, job_tags, jobs, "
                "comparisons, studies, api_tokens, alembic_version CASCADE"
            )
        )
    engine.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ingest-jobs", type=int, default=20)
    p.add_argument("--ingest-rate", type=float, default=10.0, help="steps/s of each job")
    p.add_argument("--poll-seconds", type=float, default=10.0)
    p.add_argument("--million", action="store_true", help="also time a 1M-step job's history")
    p.add_argument("--postgres-url", default=os.environ.get("ALTO_TEST_POSTGRES_URL"))
    args = p.parse_args()
    results = {}
    if args.postgres_url:
        reset_postgres(args.postgres_url)
        pg = run("postgresql", args.postgres_url, args)
        print("postgresql: " + " ".join(f"{k}={v:.1f}" for k, v in pg.items()), flush=True)
    results = run("sqlite", None, args)
    print(
        " ".join(
            f"{k}={results[k]:.1f}" for k in ("history_ms", "summary_ms", "plot_ms", "poll_p99_ms")
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
