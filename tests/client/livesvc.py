"""A live service on loopback for client, CLI and dashboard tests.

The service is the real app (real routes, database, scheduler, ingestion,
comparison summaries) served by uvicorn in a thread. Only the cluster is
simulated: `SimulatedCluster` implements the service's `ClusterBackend` and,
for every submitted job, plays the engine: it reads the spec the service put
in the job's environment, posts deterministic metric batches to the report URL
with the job's ingestion token, exactly as `engine.run` does, then ends. The
real engine on real Ray is covered by `alto demo`'s test.

Imported by path from tests/cli and tests/dashboard (see their conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from alto_client import metrics as m
from alto_client.spec import JobSpec

SPEC_ENV = "ALTO_JOB_SPEC"

TINY_SPEC = {
    "name": "tiny-sim",
    "tags": ["sim"],
    "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16},
    "resources": {"workers": 1, "device": "cpu"},
    "training": {
        "steps": 12,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "lr": 0.003,
        "seed": 11,
        "eval_interval": 4,
    },
    "optimizer": {"name": "adamw"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def simulated_curve(optimizer: str, seed: int, step: int) -> float:
    """A loss curve where ALTO descends faster than AdamW; seeds shift it slightly."""
    rate = 4.0 if optimizer == "alto" else 6.0
    return 1.5 + 4.0 * math.exp(-step / rate) + 0.01 * (seed % 7)


@dataclass
class _SimJob:
    spec: JobSpec
    status: str = "PENDING"
    message: str | None = None
    log: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class SimulatedCluster:
    """A `ClusterBackend` whose jobs report metrics like the engine, without Ray.

    `step_delay_s` paces the steps so tests can watch a job RUNNING; `fail_names`
    makes jobs with those spec names fail half-way.
    """

    def __init__(
        self, cpus: float = 8.0, step_delay_s: float = 0.02, fail_names: tuple[str, ...] = ()
    ) -> None:
        self.cpus = cpus
        self.step_delay_s = step_delay_s
        self.fail_names = fail_names
        self.jobs: dict[str, _SimJob] = {}
        self._lock = threading.Lock()

    # -- ClusterBackend -----------------------------------------------------------------

    def capacity(self):
        from service.cluster import ClusterCapacity

        return ClusterCapacity(nodes=[{"CPU": self.cpus, "GPU": 0.0}])

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        with self._lock:
            if submission_id in self.jobs:
                return
            spec = JobSpec.model_validate(json.loads(env_vars[SPEC_ENV]))
            job = _SimJob(spec=spec)
            job.log.append(f"$ {entrypoint}")
            self.jobs[submission_id] = job
        job.thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        job.thread.start()

    def state(self, submission_id: str):
        from service.cluster import RayJobState

        job = self.jobs.get(submission_id)
        if job is None:
            return None
        return RayJobState(status=job.status, message=job.message)

    def stop(self, submission_id: str) -> None:
        job = self.jobs.get(submission_id)
        if job is not None:
            job.stop.set()

    def logs(self, submission_id: str) -> str:
        job = self.jobs.get(submission_id)
        return "" if job is None else "\n".join(job.log) + "\n"

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        for job in self.jobs.values():
            job.stop.set()
        for job in self.jobs.values():
            if job.thread is not None:
                job.thread.join(10)

    # -- the simulated engine -----------------------------------------------------------

    def _run(self, job: _SimJob) -> None:
        spec = job.spec
        report = spec.report
        assert report is not None, "the service must fill in the report section"
        optimizer = spec.optimizer.name
        seed = spec.training.seed
        steps = spec.training.steps
        every = spec.training.eval_interval or steps
        tokens = spec.tokens_per_step
        state_per_param = {"alto": 3, "adamw": 2, "e": 3}[optimizer]
        params = 50_000
        job.status = "RUNNING"
        job.log.append(f"training {spec.name} with {optimizer}, seed {seed}, {steps} steps")
        headers = {"Authorization": f"Bearer {report.token}"}
        url = f"{report.url}/v1/jobs/{report.job_id}/metrics"
        with httpx.Client(timeout=10.0) as http:
            for step in range(1, steps + 1):
                if job.stop.wait(self.step_delay_s):
                    job.status, job.message = "STOPPED", "stopped by request"
                    return
                if spec.name in self.fail_names and step > steps // 2:
                    job.status, job.message = "FAILED", f"simulated crash at step {step}"
                    job.log.append(job.message)
                    return
                now = time.time()
                loss = simulated_curve(optimizer, seed, step)
                points = [
                    (m.TRAIN_LOSS, loss),
                    (m.TRAIN_LR, spec.training.lr),
                    (m.TRAIN_TOKENS_PER_S, tokens / (0.1 if optimizer == "adamw" else 0.11)),
                    (m.TRAIN_STEP_TIME_S, 0.1),
                ]
                if step == 1:
                    points += [
                        (m.MODEL_PARAMS, float(params)),
                        (m.OPTIM_STATE_BYTES, float(4 * state_per_param * params)),
                    ]
                if step % every == 0 or step == steps:
                    val = loss + 0.05
                    points += [(m.VAL_LOSS, val), (m.VAL_PPL, math.exp(val))]
                if step == steps:
                    rss = 100e6 + 4 * state_per_param * params
                    points.append((m.MEM_PEAK_RSS_BYTES, rss))
                body = {
                    "points": [
                        {"step": step, "name": n, "value": v, "time": now} for n, v in points
                    ]
                }
                try:
                    response = http.post(url, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    job.status, job.message = "FAILED", f"cannot report metrics: {exc}"
                    return
                if response.status_code >= 300:
                    job.status = "FAILED"
                    job.message = f"metrics rejected: {response.status_code} {response.text}"
                    return
                job.log.append(f"step {step} loss {loss:.4f}")
        job.status = "SUCCEEDED"


@dataclass
class LiveService:
    url: str
    admin_token: str
    cluster: SimulatedCluster
    data_dir: Path

    def token_for(self, owner: str) -> str:
        from service.auth import create_token
        from service.settings import Settings

        return create_token(Settings(data_dir=self.data_dir), owner)


@contextmanager
def live_service(data_dir: Path, cluster: SimulatedCluster | None = None) -> Iterator[LiveService]:
    """Serve the real app on a free loopback port, with `cluster` as its Ray."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    cluster = cluster or SimulatedCluster()
    port = free_port()
    admin = "alto_test_admin_token_0123456789"
    settings = Settings(
        data_dir=data_dir,
        admin_token=admin,
        public_url=f"http://127.0.0.1:{port}",
        scheduler_interval_s=0.2,
        sse_poll_interval_s=0.1,
    )
    app = create_app(settings, backend=cluster)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield LiveService(url=url, admin_token=admin, cluster=cluster, data_dir=data_dir)
    finally:
        cluster.close()
        server.should_exit = True
        thread.join(15)


class DroppingProxy:
    """A loopback TCP proxy that breaks its first connections on purpose.

    `drop_before`: that many connections are closed after the request arrived and
    before anything reaches the service (a connection reset as the client sees it).
    `drop_after`: that many requests are forwarded to the service, its answer is
    read, and the client's connection is closed without the answer (the request
    took effect but the client never heard back). `cut_stream`: that many
    connections are forwarded until the answer carried a `metrics` event, then
    cut (an event stream dropped mid-way). Then it forwards faithfully.
    """

    def __init__(
        self, upstream_port: int, drop_before: int = 0, drop_after: int = 0, cut_stream: int = 0
    ) -> None:
        self.upstream_port = upstream_port
        self.drop_before = drop_before
        self.drop_after = drop_after
        self.cut_stream = cut_stream
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._sock.close()

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                if self.drop_before > 0:
                    self.drop_before -= 1
                    mode = "before"
                elif self.drop_after > 0:
                    self.drop_after -= 1
                    mode = "after"
                elif self.cut_stream > 0:
                    self.cut_stream -= 1
                    mode = "cut"
                else:
                    mode = "pipe"
            threading.Thread(target=self._handle, args=(conn, mode), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _handle(self, conn: socket.socket, mode: str) -> None:
        upstream = None
        try:
            if mode == "before":
                self._read_request(conn)
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            if mode == "after":
                upstream.sendall(self._read_request(conn))
                upstream.recv(65536)  # the service has answered: the request took effect
                return
            done = threading.Event()

            def pump(src: socket.socket, dst: socket.socket, cut: bool = False) -> None:
                seen = b""
                try:
                    while chunk := src.recv(65536):
                        dst.sendall(chunk)
                        seen += chunk
                        if cut and b"event: metrics" in seen:
                            return
                except OSError:
                    pass
                finally:
                    done.set()

            threading.Thread(target=pump, args=(upstream, conn, mode == "cut"), daemon=True).start()
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            done.wait(60)
        except OSError:
            pass
        finally:
            for s in (conn, upstream):
                if s is not None:
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
