"""Load benchmark of the job service on loopback.

Starts the real service (uvicorn, one process) against SQLite and, when a URL is given,
PostgreSQL, and drives it with concurrent asyncio clients, bounded in count and time:

1. submissions: `--submit-clients` clients POST tiny job specs for `--seconds`;
2. status polls: `--poll-clients` clients GET /v1/jobs/{id}, each once every
   `--poll-interval` seconds (as watchers do; the p99 target is about this phase),
   then back to back to find the most polls per second the service sustains;
3. ingestion: `--ingest-clients` clients POST batches of `--batch` metric points to
   running jobs for `--seconds`;
4. hostile: the paced polls again, while 3 anonymous clients send 2 MiB JSON bodies and
   one job uploads 10,000 points at a time; printed as a ratio to the quiet polls.

Targets on a 2-core machine: p99 status poll < 50 ms at 50 clients, >= 20,000 metric
points/s ingested. The cluster is simulated inside the server process (every job is
"running" at once) so the numbers measure the service, not Ray.

    python bench/service_load.py [--postgres-url postgresql+psycopg://...] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from service.localray import free_port

ADMIN = "alto_bench_admin_token"
SPEC = {
    "name": "bench",
    "tags": ["bench"],
    "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16},
    "training": {"steps": 10, "global_batch_size": 8, "micro_batch_size": 4},
    "optimizer": {"name": "adamw"},
}


# ---------------------------------------------------------------- server side


class BenchCluster:
    """Every submitted job runs at once; ingestion tokens are written to a file so the
    load generator can post metrics like the engine would."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file
        self.jobs: dict[str, str] = {}

    def capacity(self):
        from service.cluster import ClusterCapacity

        return ClusterCapacity(nodes=[{"CPU": 1e9}])

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        spec = json.loads(env_vars["ALTO_JOB_SPEC"])
        self.jobs[submission_id] = "RUNNING"
        with self.token_file.open("a") as f:
            f.write(
                json.dumps({"job": spec["report"]["job_id"], "token": spec["report"]["token"]})
                + "\n"
            )

    def state(self, submission_id: str):
        from service.cluster import RayJobState

        status = self.jobs.get(submission_id)
        return None if status is None else RayJobState(status)

    def stop(self, submission_id: str) -> None:
        self.jobs[submission_id] = "STOPPED"

    def logs(self, submission_id: str) -> str:
        return ""

    def ping(self) -> bool:
        return True


def serve(port: int, data_dir: Path, database_url: str | None) -> None:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN,
        public_url=f"http://127.0.0.1:{port}",
        scheduler_interval_s=1.0,
    )
    app = create_app(settings, backend=BenchCluster(data_dir / "tokens.jsonl"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- load side


@dataclass
class Phase:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int
    server_cpu_s: float = 0.0

    @property
    def per_cpu_second(self) -> float:
        """Work done per second of server CPU: the rate one free core would sustain."""
        return self.count / self.server_cpu_s if self.server_cpu_s > 0 else float("nan")

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000


SERVER: psutil.Process | None = None


def server_cpu() -> float:
    """CPU seconds the server process (all its threads) has used so far."""
    if SERVER is None:
        return 0.0
    t = SERVER.cpu_times()
    return t.user + t.system


async def run_phase(
    name: str, clients: int, seconds: float, make_request, pace_s: float = 0.0
) -> Phase:
    """`clients` tasks each issue requests until `seconds` have passed: back to back, or
    (pace_s > 0) one every `pace_s` seconds each, as a watcher polling a status does."""
    cpu0 = server_cpu()
    latencies: list[float] = []
    errors = 0
    count = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        stop_at = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal errors, count
            n = 0
            if pace_s > 0:  # spread the clients over one period
                await asyncio.sleep(pace_s * i / clients)
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await make_request(http, i, n)
                    failed = r.status_code >= 300
                except httpx.TransportError:  # a dropped connection counts, and we go on
                    failed = True
                latencies.append(time.perf_counter() - t0)
                n += 1
                if failed:
                    errors += 1
                else:
                    count += 1
                if pace_s > 0:
                    await asyncio.sleep(max(0.0, pace_s - (time.perf_counter() - t0)))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    return Phase(name, count, elapsed, latencies, errors, server_cpu() - cpu0)


async def drive(url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Phase]:
    h = {"Authorization": f"Bearer {ADMIN}"}
    out: dict[str, Phase] = {}

    async def submit(http: httpx.AsyncClient, _i: int, _n: int) -> httpx.Response:
        return await http.post(f"{url}/v1/jobs", json=SPEC, headers=h)

    out["submit"] = await run_phase("submissions", args.submit_clients, args.seconds, submit)

    async with httpx.AsyncClient(timeout=30) as http:
        ids = [
            j["id"] for j in (await http.get(f"{url}/v1/jobs?limit=200", headers=h)).json()["items"]
        ]

    async def poll(http: httpx.AsyncClient, i: int, n: int) -> httpx.Response:
        return await http.get(f"{url}/v1/jobs/{ids[(i + n) % len(ids)]}", headers=h)

    out["poll"] = await run_phase(
        "status polls", args.poll_clients, args.seconds, poll, pace_s=args.poll_interval
    )
    out["poll_max"] = await run_phase("status polls", args.poll_clients, args.seconds, poll)

    # wait until the scheduler launched enough jobs to ingest into
    token_file = data_dir / "tokens.jsonl"
    deadline = time.monotonic() + 30
    tokens: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        if token_file.exists():
            tokens = [json.loads(line) for line in token_file.read_text().splitlines() if line]
        if len(tokens) >= args.ingest_clients:
            break
        await asyncio.sleep(0.2)
    tokens = tokens[: args.ingest_clients]
    next_step = [1] * len(tokens)
    names = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s")
    per_step = len(names)
    steps_per_batch = max(1, args.batch // per_step)

    async def ingest(http: httpx.AsyncClient, i: int, _n: int) -> httpx.Response:
        job = tokens[i % len(tokens)]
        start = next_step[i]
        next_step[i] += steps_per_batch
        now = time.time()
        points = [
            {"step": s, "name": name, "value": 1.0 / s, "time": now}
            for s in range(start, start + steps_per_batch)
            for name in names
        ]
        return await http.post(
            f"{url}/v1/jobs/{job['job']}/metrics",
            json={"points": points},
            headers={"Authorization": f"Bearer {job['token']}"},
        )

    ingest_phase = await run_phase("ingestion", len(tokens), args.seconds, ingest)
    ingest_phase.count *= steps_per_batch * per_step  # count points, not requests
    out["ingest"] = ingest_phase

    # hostile: the same paced polls while 3 anonymous clients send 2 MiB JSON bodies and
    # one job uploads 10,000 points at a time, back to back
    anonymous_body = json.dumps({"name": "x", "padding": ["a" * 1000] * 2000}).encode()
    big_step = [10**9]

    async def anonymous(http: httpx.AsyncClient, _i: int, _n: int) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        r = await http.post(f"{url}/v1/jobs", content=anonymous_body, headers=headers)
        return httpx.Response(200) if r.status_code == 401 else r  # 401 is the answer

    async def big_upload(http: httpx.AsyncClient, _i: int, _n: int) -> httpx.Response:
        job = tokens[0]
        start = big_step[0]
        big_step[0] += 10_000
        points = [
            {"step": s, "name": "train/loss", "value": 1.0, "time": 1.0}
            for s in range(start, start + 10_000)
        ]
        return await http.post(
            f"{url}/v1/jobs/{job['job']}/metrics",
            json={"points": points},
            headers={"Authorization": f"Bearer {job['token']}"},
        )

    out["poll_hostile"], out["anonymous"], out["big_upload"] = await asyncio.gather(
        run_phase(
            "polls, hostile", args.poll_clients, args.seconds, poll, pace_s=args.poll_interval
        ),
        run_phase("anonymous 2 MiB", 3, args.seconds, anonymous),
        run_phase("10k-point uploads", 1, args.seconds, big_upload),
    )
    return out


@contextlib.contextmanager
def running_server(
    label: str, database_url: str | None, data_dir: Path | None = None
) -> Iterator[tuple[str, Path]]:
    """The real service (`serve`, uvicorn) in a subprocess on a free loopback port:
    yields (its URL, its data directory) once /healthz answers, and stops it after.
    `SERVER` is that process while it runs (for `server_cpu`)."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"alto-bench-{label}-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--serve", str(port), "--data-dir", str(data_dir)]
    if database_url:
        cmd += ["--database-url", database_url]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    global SERVER
    SERVER = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"service for {label} did not start")
            time.sleep(0.2)
        yield url, data_dir
    finally:
        SERVER = None
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def bench_backend(
    label: str, database_url: str | None, args: argparse.Namespace
) -> dict[str, Phase]:
    with running_server(label, database_url) as (url, data_dir):
        return asyncio.run(drive(url, data_dir, args))


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "DROP TABLE IF EXISTS metric_points, job_tags, jobs, comparisons, api_tokens, alembic_version CASCADE"
            )
        )
    engine.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each phase (max 60)")
    p.add_argument("--submit-clients", type=int, default=8)
    p.add_argument("--poll-clients", type=int, default=50)
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between one client's status polls (a watching CLI or dashboard)",
    )
    p.add_argument("--ingest-clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=2000, help="metric points per upload")
    p.add_argument("--postgres-url", default=os.environ.get("ALTO_TEST_POSTGRES_URL"))
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--database-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.data_dir, args.database_url)
        return 0
    for name, value, hi in (
        ("--seconds", args.seconds, 60),
        ("--submit-clients", args.submit_clients, 200),
        ("--poll-clients", args.poll_clients, 200),
        ("--ingest-clients", args.ingest_clients, 32),
        ("--batch", args.batch, 50_000),
    ):
        if not 0 < value <= hi:
            p.error(f"{name} must be in (0, {hi}], got {value}")
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres_url:
        reset_postgres(args.postgres_url)
        backends.append(("postgresql", args.postgres_url))
    else:
        print("(no --postgres-url / ALTO_TEST_POSTGRES_URL: PostgreSQL skipped)")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(
        f"{'backend':<11} {'phase':<13} {'clients':>7} {'rate':>16} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'per server CPU-s':>17}"
    )
    ok = True
    for label, url in backends:
        res = bench_backend(label, url, args)
        rows = [
            (
                "submissions",
                args.submit_clients,
                f"{res['submit'].rate:,.0f} jobs/s",
                res["submit"],
            ),
            (
                f"polls/{args.poll_interval:g}s",
                args.poll_clients,
                f"{res['poll'].rate:,.0f} polls/s",
                res["poll"],
            ),
            (
                "polls max",
                args.poll_clients,
                f"{res['poll_max'].rate:,.0f} polls/s",
                res["poll_max"],
            ),
            (
                "ingestion",
                args.ingest_clients,
                f"{res['ingest'].rate:,.0f} points/s",
                res["ingest"],
            ),
            (
                "polls hostile",
                args.poll_clients,
                f"{res['poll_hostile'].rate:,.0f} polls/s",
                res["poll_hostile"],
            ),
            (
                "anon 2 MiB",
                3,
                f"{res['anonymous'].rate:,.1f} req/s",
                res["anonymous"],
            ),
            (
                "10k uploads",
                1,
                f"{res['big_upload'].rate:,.1f} req/s",
                res["big_upload"],
            ),
        ]
        for phase, clients, rate, ph in rows:
            print(
                f"{label:<11} {phase:<13} {clients:>7} {rate:>16} {ph.pct(0.5):>8.1f} "
                f"{ph.pct(0.99):>8.1f} {ph.errors:>6} {ph.per_cpu_second:>17,.0f}"
            )
        poll_ok = res["poll"].pct(0.99) < 50.0
        ingest_ok = res["ingest"].rate >= 20_000
        print(
            f"{label:<11} targets: status-poll p99 {res['poll'].pct(0.99):.1f} ms < 50 ms "
            f"{'OK' if poll_ok else 'MISSED'}; ingestion {res['ingest'].rate:,.0f} >= 20,000 points/s "
            f"{'OK' if ingest_ok else 'MISSED'}"
        )
        quiet, hostile = res["poll"], res["poll_hostile"]
        print(
            f"{label:<11} hostile/quiet status-poll ratio: p50 "
            f"{hostile.pct(0.5) / quiet.pct(0.5):.2f}x, p99 {hostile.pct(0.99) / quiet.pct(0.99):.2f}x "
            "(3 anonymous 2 MiB senders + 10k-point uploads vs none)"
        )
        ok = ok and poll_ok and ingest_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
