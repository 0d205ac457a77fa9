"""The embedded Ray head of `alto serve` on a shared host: it needs its token, listens on
loopback only, keeps to its own temp dir (a later head on the host does not capture its
jobs), stops on SIGTERM as on SIGINT, and a service restarted after a crash re-attaches
to it.

One head (plus one foreign head) serves the module's head tests; the server tests start
`python -m service.server` twice. Each Ray head takes 7-15 s to start on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from svc_fakes import tiny_spec
from svc_proc import ServiceProcess

from service.localray import (
    STATE_FILE,
    TOKEN_FILE,
    LocalRayHead,
    _terminate,
    free_port,
    free_port_flags,
    head_processes,
    load_or_create_token,
    ray_private_dir,
)

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
ADMIN = "alto_localray_test_admin_token"
H = {"Authorization": f"Bearer {ADMIN}"}
STANDIN = Path(__file__).resolve().parent / "standin_engine.py"
RAY = str(Path(sys.executable).with_name("ray"))


def wait_for(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def short_dir(prefix: str) -> Path:
    """A directory under /tmp with a short path (Ray's Unix sockets go below it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# -- files: cheap, no Ray ------------------------------------------------------------------


def test_token_is_created_once_private_and_reused(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token
    # a copy someone made readable is tightened, not trusted as is
    path.chmod(0o644)
    assert load_or_create_token(tmp_path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert load_or_create_token(other) != token


def test_temp_dir_is_in_the_data_dir_unless_too_long_for_ray_sockets(tmp_path: Path) -> None:
    short = short_dir("alto-t-")
    try:
        assert ray_private_dir(short) == short.resolve() / "ray"
    finally:
        short.rmdir()
    deep = tmp_path / ("d" * 80)
    fallback = ray_private_dir(deep)
    assert fallback.parent == Path("/tmp") and fallback.name.startswith("alto-ray-")
    assert ray_private_dir(deep) == fallback  # stable: a restart finds the same dir
    assert ray_private_dir(tmp_path / ("e" * 80)) != fallback


# -- one locked-down head, and a foreign head started after it ---------------------------


class Heads:
    def __init__(self, ours: LocalRayHead, foreign_gcs: str, shared_tmp: Path) -> None:
        self.ours = ours
        self.foreign_gcs = foreign_gcs
        self.shared_tmp = shared_tmp
        self.auth = {"Authorization": f"Bearer {ours.auth_token}"}


def start_foreign_head(shared_tmp: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A plain `ray start --head` as another user of the host runs it: default temp dir
    (here: RAY_TMPDIR=shared_tmp, standing in for /tmp), no token. Loopback addresses
    only, so no test traffic leaves 127.0.0.1."""
    gcs_port = free_port()
    cmd = [RAY, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=1"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats"]
    cmd += ["--node-ip-address=127.0.0.1"]
    cmd += free_port_flags()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_TMPDIR=str(shared_tmp),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        DASHBOARD_METRIC_PORT=str(free_port()),
        AUTOSCALER_METRIC_PORT=str(free_port()),
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    current = shared_tmp / "ray" / "ray_current_cluster"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        return current.exists() and current.read_text().strip().endswith(f":{gcs_port}")

    wait_for(up, 120, "the foreign head")
    return proc, gcs_port


@pytest.fixture(scope="module")
def heads() -> Iterator[Heads]:
    # the host's default Ray temp dir, private to this module so that the foreign head
    # disturbs no other Ray on the machine; our head inherits this environment too
    shared_tmp = short_dir("lrshared-")
    data = short_dir("lrdata-")
    foreign = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(shared_tmp))
        ours = LocalRayHead(num_cpus=1, data_dir=data, log_path=data / "head.log")
        try:
            t0 = time.monotonic()
            ours.start()
            print(f"our head answered after {time.monotonic() - t0:.1f} s")
            foreign, port = start_foreign_head(shared_tmp, data / "foreign.log")
            yield Heads(ours, f"127.0.0.1:{port}", shared_tmp)
        finally:
            ours.stop()
            if foreign is not None:
                _terminate(foreign.pid, foreign.pid, grace_s=5)
                foreign.wait(10)
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(shared_tmp, ignore_errors=True)


def our_node_id(heads: Heads) -> str:
    r = httpx.get(f"{heads.ours.dashboard_url}/api/v0/nodes", headers=heads.auth, timeout=10)
    (node,) = r.json()["data"]["result"]["result"]
    return node["node_id"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_job_api_refuses_callers_without_our_token(heads: Heads) -> None:
    head = heads.ours
    jobs = f"{head.dashboard_url}/api/jobs/"
    run = {"entrypoint": "echo pwned"}
    assert httpx.post(jobs, json=run, timeout=10).status_code == 401
    bad = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.post(jobs, json=run, headers=bad, timeout=10).status_code == 403
    assert httpx.get(jobs, timeout=10).status_code == 401
    r = httpx.get(jobs, headers=heads.auth, timeout=10)
    assert r.status_code == 200, r.text
    assert "pwned" not in r.text  # nothing of the refused submissions was stored
    # the token: this data dir's own, private, and what the head was started with
    assert head.auth_token == (head.data_dir / TOKEN_FILE).read_text().strip()
    assert stat.S_IMODE((head.data_dir / TOKEN_FILE).stat().st_mode) == 0o600


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_jobs_run_on_our_head_when_another_head_started_later(heads: Heads) -> None:
    head = heads.ours
    # the foreign head really is the host's "current cluster" now
    assert (heads.shared_tmp / "ray" / "ray_current_cluster").read_text().strip() == (
        heads.foreign_gcs
    )
    code = (
        "import ray; ray.init(); c = ray.get_runtime_context(); "
        "print('NODE=' + c.get_node_id()); print('GCS=' + c.gcs_address)"
    )
    r = httpx.post(
        f"{head.dashboard_url}/api/jobs/",
        json={"entrypoint": f'python -c "{code}"'},
        headers=heads.auth,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    job = r.json()["submission_id"]

    def ended():
        info = httpx.get(
            f"{head.dashboard_url}/api/jobs/{job}", headers=heads.auth, timeout=10
        ).json()
        return info if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

    def logs() -> str:
        url = f"{head.dashboard_url}/api/jobs/{job}/logs"
        return httpx.get(url, headers=heads.auth, timeout=10).json()["logs"]

    try:
        info = wait_for(ended, 120, "the job to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\njob log so far:\n{logs()[-3000:]}") from None
    text = logs()
    assert info["status"] == "SUCCEEDED", (info, text)
    # on the code before this test, the supervisor sent the driver to the later head
    assert f"NODE={our_node_id(heads)}" in text, text
    assert f"GCS={head.gcs_address}" in text, text
    # ours never wrote there: it keeps its own temp dir and session, in a directory
    # no other user can enter (Ray makes the dirs it creates 0777)
    assert head.temp_dir is not None and head.temp_dir.parent == head.data_dir.resolve() / "ray"
    assert stat.S_IMODE(head.temp_dir.parent.stat().st_mode) == 0o700
    assert (head.temp_dir / "ray_current_cluster").read_text().strip() == head.gcs_address
    assert any(p.name.startswith("session_2") for p in head.temp_dir.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_socket_of_the_head_listens_on_loopback_only(heads: Heads) -> None:
    """Run after the job above, so job-supervisor and worker processes (each with a gRPC
    server of its own) are among those checked when they are still alive."""
    head = heads.ours
    assert head.pid is not None
    listening: dict[tuple[str, int], str] = {}
    for proc in head_processes(head.pid, head.pid):
        try:
            name = " ".join(proc.cmdline())[:90] or proc.name()
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue  # ended meanwhile
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening[(c.laddr.ip, c.laddr.port)] = name
    ports = {port for _, port in listening}
    # GCS, dashboard and at least raylet, object manager, agents, client server, metrics
    assert head.gcs_port in ports and head.dashboard_port in ports, listening
    assert len(listening) >= 8, listening
    exposed = {addr: who for addr, who in listening.items() if addr[0] not in LOOPBACK}
    assert not exposed, exposed
    # nothing of it on UDP either
    for proc in head_processes(head.pid, head.pid):
        try:
            udp = [c for c in proc.net_connections(kind="udp") if c.laddr.ip not in LOOPBACK]
        except psutil.Error:
            continue
        assert not udp, (proc.pid, udp)


# -- `python -m service.server`: signals and restarts -------------------------------------


def serve(data: Path, log: Path, port: int, entrypoint: str | None = None) -> ServiceProcess:
    env = {
        "ALTO_DATA_DIR": str(data),
        "ALTO_ADMIN_TOKEN": ADMIN,
        "ALTO_SCHEDULER_INTERVAL_S": "0.5",
        "ALTO_RAY_ADDRESS": "",
    }
    if entrypoint:
        env["ALTO_ENGINE_ENTRYPOINT"] = entrypoint
    return ServiceProcess(port, env, log).start(timeout_s=180)


def the_head_of(svc: ServiceProcess) -> list[psutil.Process]:
    """The `ray start` child of the service and everything it runs."""
    assert svc.proc is not None
    (ray_start,) = [
        p for p in psutil.Process(svc.proc.pid).children() if "start" in " ".join(p.cmdline())
    ]
    return head_processes(ray_start.pid, ray_start.pid)


def still_running(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def cleanup(svc: ServiceProcess, procs: list[psutil.Process], data: Path) -> None:
    """Whatever a failed test left: the service, its head, the head's temp dir."""
    svc.kill()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    shutil.rmtree(ray_private_dir(data), ignore_errors=True)


def send(svc: ServiceProcess, sig: int) -> int:
    proc, svc.proc = svc.proc, None
    assert proc is not None
    proc.send_signal(sig)
    return proc.wait(60)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_restart_after_a_crash_reattaches_and_sigterm_stops_the_head(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    standin = f"env STANDIN_STEP_S=0.25 {sys.executable} {STANDIN}"
    svc = serve(data, tmp_path / "service.log", port, standin)
    procs: list[psutil.Process] = []
    try:
        procs = the_head_of(svc)
        state = json.loads((data / STATE_FILE).read_text())
        assert stat.S_IMODE((data / STATE_FILE).stat().st_mode) == 0o600
        # this data dir's path is too long for Ray's sockets: the head lives in /tmp
        assert state["temp_dir"] == str(ray_private_dir(data) / "t")
        assert stat.S_IMODE(ray_private_dir(data).stat().st_mode) == 0o700
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)
        # the service reaches its Ray with the head's token (readyz asks Ray)
        wait_for(lambda: c.get("/readyz").status_code == 200, 60, "/readyz")
        jid = c.post("/v1/jobs", json=tiny_spec(steps=60, eval_interval=20)).json()["id"]

        def reporting():
            j = c.get(f"/v1/jobs/{jid}").json()
            lm = j["latest_metrics"].get("train/loss")
            return j if j["status"] == "RUNNING" and lm and lm["step"] >= 3 else None

        wait_for(reporting, 180, "the job to run and report")
        svc.kill()  # a crash: no cleanup runs; the head lives on in its own group
        assert psutil.pid_exists(state["pid"])

        t0 = time.monotonic()
        svc = serve(data, tmp_path / "service.log", port, standin)
        restart_s = time.monotonic() - t0
        print(f"restart with re-attach: {restart_s:.1f} s")
        again = json.loads((data / STATE_FILE).read_text())
        assert again["pid"] == state["pid"] and again["started"] == state["started"]
        assert again["dashboard_url"] == state["dashboard_url"]
        assert "re-attached" in (tmp_path / "service.log").read_text()
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)

        def ended():
            j = c.get(f"/v1/jobs/{jid}").json()
            return j if j["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        final = wait_for(ended, 180, "the job to end after the restart")
        assert final["status"] == "SUCCEEDED", final  # not FAILED by a new head
        steps = {s["name"]: s["steps"] for s in c.get(f"/v1/jobs/{jid}/metrics").json()["series"]}
        assert steps["train/loss"] == list(range(1, 61))

        procs = head_processes(state["pid"], state["pid"])
        assert procs
        t0 = time.monotonic()
        rc = send(svc, signal.SIGTERM)
        print(f"SIGTERM to exit: {time.monotonic() - t0:.1f} s")
        assert rc == -signal.SIGTERM
        assert not still_running(procs), still_running(procs)
        assert not (data / STATE_FILE).exists()
    finally:
        cleanup(svc, procs, data)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_locks_its_head_and_stops_it_on_a_signal(tmp_path: Path, sig: int) -> None:
    data = tmp_path / "data"
    svc = serve(data, tmp_path / "service.log", free_port())
    procs: list[psutil.Process] = []
    try:
        procs = the_head_of(svc)
        assert len(procs) >= 5
        # the head refuses callers without its token, and the service has that token
        (ray_api,) = re.findall(r"Ray job API: (http://127\.0\.0\.1:\d+)", svc.log_path.read_text())
        assert httpx.get(f"{ray_api}/api/jobs/", timeout=10).status_code == 401
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)
        wait_for(lambda: c.get("/readyz").status_code == 200, 60, "/readyz (asks Ray)")
        t0 = time.monotonic()
        rc = send(svc, sig)
        print(f"{signal.Signals(sig).name} to exit: {time.monotonic() - t0:.1f} s (rc {rc})")
        assert not still_running(procs), still_running(procs)
        assert not (data / STATE_FILE).exists()
    finally:
        cleanup(svc, procs, data)
