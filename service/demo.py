"""``alto demo``: the whole product on one machine, in one command.

It starts the embedded service (``alto serve``: SQLite and a local Ray head) as
a child process with a fresh admin token, submits the ``tiny-moe-cpu``
comparison of ALTO against AdamW (each at the learning rate the CPU study in
``configs/study-tiny-cpu.yaml`` selected), shows live progress, prints the
comparison table, writes the plot and an HTML report, and prints the
dashboard URL. The service runs as a child so that stopping the demo (or a
crash in it) always takes the service and its Ray head down with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

from alto_client.client import Client, load_spec
from alto_client.errors import AltoError
from alto_client.models import JobStatus
from alto_client.render import comparison_table, fmt_duration
from alto_client.report import write_report
from alto_client.spec import JobSpec
from alto_client.watch import watch_jobs
from rich.console import Console

from service.localray import free_port

DEMO_SPEC = "tiny-moe-cpu.yaml"
READY_TIMEOUT_S = 180.0


class DemoError(AltoError):
    """The demo could not run (no spec found, service did not start)."""


STUDY_SPEC = "configs/study-tiny-cpu.yaml"
"""The study that chose the demo's learning rates (README, "Studies")."""


def find_demo_spec(explicit: Path | None) -> Path:
    """The spec to run: the given one, else the tiny-moe-cpu.yaml that ships with the
    service package (package data; the repository's configs/ points at it)."""
    if explicit is not None:
        if not explicit.is_file():
            raise DemoError(f"--spec: no such file {str(explicit)!r}")
        return explicit
    shipped = shipped_config(DEMO_SPEC)
    if not shipped.is_file():
        raise DemoError(
            f"the service package has no {DEMO_SPEC} (looked at {shipped}); pass --spec"
        )
    return shipped


def shipped_config(name: str) -> Path:
    """A job spec that ships with the service package (`service/configs/NAME`)."""
    return Path(str(files("service").joinpath("configs", name)))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def embedded_service(data_dir: Path, port: int, console: Console) -> Iterator[tuple[str, str]]:
    """Run ``alto serve`` as a child process; yield (url, admin token) once it is ready."""
    token = "alto_demo_" + secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "service.log"
    env = dict(os.environ)
    env["ALTO_ADMIN_TOKEN"] = token
    env.pop("RAY_ADDRESS", None)
    # the Ray job must run the engine with this interpreter, venv activated or not
    env.setdefault("ALTO_ENGINE_ENTRYPOINT", f"{sys.executable} -m engine.run")
    cmd = [
        sys.executable,
        "-m",
        "alto_client.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        with console.status("starting the service and a local Ray head ...", spinner="dots"):
            _wait_ready(url, token, proc, log_path)
        yield url, token
    finally:
        _stop(proc)


def _wait_ready(url: str, token: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with Client(url, token, retries=1, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(
                    f"the service exited with code {proc.returncode}; last lines of "
                    f"{log_path}:\n{_tail(log_path)}"
                )
            try:
                if client.request("GET", "/readyz").status_code == 200:
                    return
            except AltoError:
                pass
            time.sleep(0.5)
    raise DemoError(
        f"the service did not become ready within {READY_TIMEOUT_S:.0f} s; "
        f"see {log_path}:\n{_tail(log_path)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first (the service stops its Ray head on the way out), then harder."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 40.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_demo(
    *,
    steps: int | None,
    seeds: int,
    port: int,
    data_dir: Path | None,
    spec_path: Path | None,
    keep_serving: bool,
    console: Console,
) -> bool:
    """Run the demo; True when every job succeeded."""
    started = time.monotonic()
    spec_file = find_demo_spec(spec_path)
    spec = load_spec(spec_file)
    if steps is not None:
        overrides: dict[str, object] = {"training.steps": steps}
        # keep evaluation, checkpoints and the schedule inside a shortened run
        if spec.training.eval_interval > steps:
            overrides["training.eval_interval"] = 0
        if spec.training.checkpoint_interval > steps:
            overrides["training.checkpoint_interval"] = 0
        if spec.training.warmup_steps >= steps:
            overrides["training.warmup_steps"] = steps // 5
        if spec.training.lr_decay_steps is not None and spec.training.lr_decay_steps > steps:
            overrides["training.lr_decay_steps"] = steps
        spec = spec.with_overrides(overrides)
    data_dir = (data_dir or Path(".alto") / "demo").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    console.rule("[bold]ALTO demo")
    console.print(
        f"spec {spec_file} · {spec.training.steps} steps · global batch "
        f"{spec.training.global_batch_size} · {spec.resources.workers} workers · "
        f"arms {_arms_text(spec, shipped=spec_path is None)} · {seeds} seed(s) · data {data_dir}"
    )
    try:
        return _run(spec, seeds, data_dir, port, keep_serving, console, started)
    except KeyboardInterrupt:
        console.print("interrupted: the service and its Ray head stopped, and the jobs with them")
        return False


def _arms_text(spec: JobSpec, *, shipped: bool) -> str:
    """Which learning rates the demo compares, and where the shipped ones come from."""
    alto_lr = spec.optimizer.lr if spec.optimizer.name == "alto" else None
    text = (
        f"alto (lr {alto_lr or spec.training.lr:g}, paper alpha/beta1) vs adamw "
        f"(lr {spec.training.lr:g})"
    )
    if shipped:
        text += f", both tuned at batch {spec.training.global_batch_size} by {STUDY_SPEC}"
    return text


def _run(
    spec: JobSpec,
    seeds: int,
    data_dir: Path,
    port: int,
    keep_serving: bool,
    console: Console,
    started: float,
) -> bool:
    with embedded_service(data_dir, port, console) as (url, token):
        console.print(f"service ready at {url} after {fmt_duration(time.monotonic() - started)}")
        with Client(url, token) as client:
            comp = client.compare(
                spec, ["alto", "adamw"], seeds, baseline="adamw", name=f"{spec.name} demo"
            )
            job_ids = [j for arm in comp.arms for j in arm.job_ids]
            console.print(f"comparison {comp.id}: {len(job_ids)} jobs submitted")
            final = watch_jobs(client, job_ids, console=console)
            comp = client.comparison(comp.id)
            console.print(comparison_table(comp, console.width))
            plot = client.plot(comp.id, data_dir / "comparison.png")
            report = write_report(client, comp.id, data_dir / "report.html")
            ok = all(j.status == JobStatus.SUCCEEDED for j in final)
            for job in final:
                if job.status != JobStatus.SUCCEEDED:
                    console.print(
                        f"[red]job {job.id} ({job.arm}) ended {job.status.value}:[/] "
                        f"{job.status_reason or ''}; `alto logs {job.id}` shows its log"
                    )
            console.print(f"plot:      {plot}")
            console.print(f"report:    {report}")
            console.print(f"dashboard: {url}/comparisons/{comp.id}#token={token}")
            console.print(f"demo took {fmt_duration(time.monotonic() - started)}")
            if keep_serving:
                console.print("the service keeps running for the dashboard; Ctrl-C stops it")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            else:
                console.print(
                    "the service stops now; browse these results again with "
                    f"`alto serve --data-dir {data_dir}`"
                )
    return ok
