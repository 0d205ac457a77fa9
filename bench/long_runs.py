"""What long runs cost per request: a comparison of two 100k-step jobs.

Stores `--steps` steps of five metrics a step for each of a comparison's two jobs (plus
a validation loss every 500 steps and the optimizer state size every 1000) through
`service.repo.insert_points`, 200 steps an upload as the engine sends them, on SQLite
and, when a URL is given, PostgreSQL. Then, in-process (one request at a time):

- `GET /v1/jobs/{id}/metrics?max_points=1000` (every metric of one job),
- `GET /v1/comparisons/{id}` (the summary the dashboard polls) and
  `GET /v1/comparisons/{id}/plot.png`, each twice: cold (a new point was stored just
  before each request, so the answer is computed afresh) and cached (nothing changed
  since the last request: `service.render_cache`);

and, on the real server (uvicorn in a subprocess, `bench/service_load.py`'s, on the same
database), `GET /v1/jobs/{id}` status polls from `--poll-clients` async clients, each
once every `--poll-interval` s, while `--ingest-jobs` jobs each post `--ingest-rate`
steps/s (five metrics a step) through the ingest endpoint with their own tokens, one
upload a second as the engine's uploader sends (engine/reporting.py: poll_s=1).

Each in-process read is repeated `--repeat` times; medians are printed, with the CPU
time the process spent. Targets: history and summary < 50 ms, plot < 300 ms, poll p99 <
50 ms. The last line is

    history_ms=X summary_ms=Y plot_ms=Z poll_p99_ms=W

for SQLite, with the cold summary and plot. `--million` adds a job of 1M steps and times
its history too.

    python bench/long_runs.py [--steps 100000] [--million] [--postgres-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import service_load  # the server subprocess and the paced async clients

ADMIN = "alto_bench_admin_token"
SPEC = {
    "name": "long",
    "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16},
    "training": {"steps": 10, "global_batch_size": 8, "micro_batch_size": 4},
    "optimizer": {"name": "adamw"},
}
PER_STEP = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "mem/peak_rss_bytes")
UPLOAD_STEPS = 200
UPLOAD_INTERVAL_S = 1.0  # the engine's uploader posts what it has once a second


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


def timed(fn, repeat: int, before=None) -> list[float]:
    """Wall-clock ms of `repeat` calls (each after an untimed `before()`); the process
    CPU ms of each go to CPU_MS (on a busy machine the CPU time is what the request
    itself cost)."""
    out, cpu = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    CPU_MS[id(out)] = cpu
    return out


def cpu_median(wall: list[float]) -> float:
    return statistics.median(CPU_MS[id(wall)])


def run(label: str, database_url: str | None, args: argparse.Namespace) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.db.tables import JobRow
    from service.repo import insert_points
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

            extra = [args.steps]

            def new_point() -> None:
                """One more training step of the first job: the comparison's data version
                changes, so the next summary or plot is computed afresh."""
                extra[0] += 1
                with factory() as s:
                    insert_points(s, seqs[job_ids[0]], step_points(extra[0], 0)[:1])
                    s.commit()

            cid = comparison["id"]
            history = timed(
                lambda: get(f"/v1/jobs/{job_ids[0]}/metrics?max_points=1000"), args.repeat
            )
            summary = timed(lambda: get(f"/v1/comparisons/{cid}"), args.repeat, new_point)
            summary_hit = timed(lambda: get(f"/v1/comparisons/{cid}"), args.repeat)
            plot = timed(lambda: get(f"/v1/comparisons/{cid}/plot.png"), args.repeat, new_point)
            plot_hit = timed(lambda: get(f"/v1/comparisons/{cid}/plot.png"), args.repeat)
            out = {
                "history_ms": statistics.median(history),
                "summary_ms": statistics.median(summary),
                "plot_ms": statistics.median(plot),
                "summary_cached_ms": statistics.median(summary_hit),
                "plot_cached_ms": statistics.median(plot_hit),
            }
            print(
                f"[{label}] medians, wall (cpu) ms: history {out['history_ms']:.1f} "
                f"({cpu_median(history):.1f}); summary cold {out['summary_ms']:.1f} "
                f"({cpu_median(summary):.1f}), cached {out['summary_cached_ms']:.1f} "
                f"({cpu_median(summary_hit):.1f}); plot cold {out['plot_ms']:.1f} "
                f"({cpu_median(plot):.1f}), cached {out['plot_cached_ms']:.1f} "
                f"({cpu_median(plot_hit):.1f}); load average {os.getloadavg()[0]:.1f} "
                f"on {os.cpu_count()} cores",
                flush=True,
            )
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
                    f"median {out['million_history_ms']:.1f} ({cpu_median(big_history):.1f}) "
                    f"ms; load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        app.state.svc.engine.dispose()  # the server below opens the same database
        with service_load.running_server(label, database_url, Path(tmp)) as (url, data_dir):
            out["poll_p99_ms"] = asyncio.run(poll_phase(label, url, data_dir, args))
    return out


async def poll_phase(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> float:
    """Paced status polls on the real server while `--ingest-jobs` jobs post their
    metrics; returns the polls' p99 in ms."""
    import httpx

    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=30) as http:
        ids = []
        for i in range(args.ingest_jobs):
            r = await http.post(f"{url}/v1/jobs", json={**SPEC, "name": f"ingest{i}"}, headers=auth)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    # the bench cluster "runs" every job the scheduler launches and writes its token down
    tokens: dict[str, str] = {}
    token_file = data_dir / "tokens.jsonl"
    deadline = time.monotonic() + 60
    while len(tokens) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(tokens)} of {len(ids)} jobs were launched")
        if token_file.exists():
            for line in token_file.read_text().splitlines():
                if line:
                    entry = json.loads(line)
                    if entry["job"] in ids:
                        tokens[entry["job"]] = entry["token"]
        await asyncio.sleep(0.2)
    # each job trains at `--ingest-rate` steps/s from the phase's start; its uploader
    # posts the steps it has about once a second (engine/reporting.py: poll_s=1)
    next_step = [1] * len(ids)
    t0: list[float] = []

    async def ingest(http, i: int, _n: int):
        if not t0:
            t0.append(time.monotonic())
        start = next_step[i]
        end = max(start + 1, 1 + int((time.monotonic() - t0[0] + 1.0) * args.ingest_rate))
        next_step[i] = end
        now = time.time()
        points = [
            {"step": st, "name": name, "value": value, "time": now}
            for st in range(start, end)
            for _, name, value, _t in step_points(st, i)
        ]
        return await http.post(
            f"{url}/v1/jobs/{ids[i]}/metrics",
            json={"points": points},
            headers={"Authorization": f"Bearer {tokens[ids[i]]}"},
        )

    async def poll(http, i: int, n: int):
        return await http.get(f"{url}/v1/jobs/{ids[(i + n) % len(ids)]}", headers=auth)

    async with httpx.AsyncClient(timeout=30) as http:
        before = await server_buckets(http, url)
    polls, uploads = await asyncio.gather(
        service_load.run_phase(
            "status polls", args.poll_clients, args.poll_seconds, poll, pace_s=args.poll_interval
        ),
        service_load.run_phase(
            "ingestion", len(ids), args.poll_seconds, ingest, pace_s=UPLOAD_INTERVAL_S
        ),
    )
    async with httpx.AsyncClient(timeout=30) as http:
        after = await server_buckets(http, url)
    inside = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    steps_per_s = (sum(next_step) - len(ids)) / uploads.seconds / len(ids)
    print(
        f"[{label}] status polls on the real server, {args.poll_clients} clients at one per "
        f"{args.poll_interval:g} s each, while {len(ids)} jobs ingest {steps_per_s:.1f} "
        f"steps/s each (asked {args.ingest_rate:g}; {uploads.count} uploads, upload p99 "
        f"{uploads.pct(0.99):.1f} ms, {uploads.errors} errors): polls p50 "
        f"{polls.pct(0.5):.1f} ms, p99 {polls.pct(0.99):.1f} ms ({polls.count} polls, "
        f"{polls.errors} errors, server CPU {polls.server_cpu_s:.1f} s); load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(
        f"[{label}] the same polls timed inside the server (its request histogram, from "
        f"routing to the response's end): p50 <= {bucket_quantile(inside, 0.5) * 1000:g} ms, "
        f"p99 <= {bucket_quantile(inside, 0.99) * 1000:g} ms; the rest of a client's time is "
        "queueing for the event loop and the CPU",
        flush=True,
    )
    return polls.pct(0.99)


async def server_buckets(http, url: str) -> dict[float, int]:
    """The server's cumulative request-time histogram of GET /v1/jobs/{job_id} (200)."""
    r = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    r.raise_for_status()
    out: dict[float, int] = {}
    for line in r.text.splitlines():
        if (
            line.startswith("alto_http_request_duration_seconds_bucket{")
            and 'method="GET"' in line
            and 'route="/v1/jobs/{job_id}"' in line
            and 'status="200"' in line
        ):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = int(float(line.rsplit(" ", 1)[1]))
    return out


def bucket_quantile(cumulative: dict[float, int], q: float) -> float:
    """The smallest histogram bound that holds a fraction `q` of the observations."""
    total = max(cumulative.values(), default=0)
    for le in sorted(cumulative):
        if total and cumulative[le] >= q * total:
            return le
    return float("nan")


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
    p.add_argument("--poll-seconds", type=float, default=15.0)
    p.add_argument("--poll-clients", type=int, default=50)
    p.add_argument("--poll-interval", type=float, default=1.0, help="s between one client's polls")
    p.add_argument("--million", action="store_true", help="also time a 1M-step job's history")
    p.add_argument("--postgres-url", default=os.environ.get("ALTO_TEST_POSTGRES_URL"))
    p.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = p.parse_args()
    if args.sqlite_only:
        args.postgres_url = None
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
