"""A local Ray head owned by the embedded service: started for it, locked down, and
stopped with it.

It runs `ray start --head --block` in its own process group, so stopping it ends exactly
the Ray processes it started and no other Ray on the machine. What makes it safe on a
shared host (Ray 2.60):

- Token authentication: `RAY_AUTH_MODE=token` with `RAY_AUTH_TOKEN_PATH` pointing at a
  random token kept (mode 0600) in the data directory. Without it, `ray start` with no
  ~/.ray/auth_token runs unauthenticated and its job API runs commands for anyone.
- Loopback only: `ray start` turns `--node-ip-address=127.0.0.1` into the host's
  routable address (`services.resolve_ip_for_localhost`) unless
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`; every component (GCS, raylet, object manager,
  dashboard and its metrics server, dashboard agent, runtime-env agent, client server,
  autoscaler monitor metrics) binds to 127.0.0.1 only when the node address is loopback.
  That variable also makes the head refuse worker nodes, which a local head never has.
- Its own temp dir (`--temp-dir` and `RAY_TMPDIR`): Ray writes the "current cluster"
  file, session logs (the runtime-env agent logs job env vars in clear) and sockets
  there, so a job supervisor of this head never finds another head through
  /tmp/ray/ray_current_cluster and no other head finds this one. Ray makes every
  directory it creates there mode 0777 ("so others can use it"), so the temp dir sits
  inside a directory of ours with mode 0700, and the head runs with umask 077.
- A state file (pid, process group, ports) in the data directory, so a service that
  crashed (SIGKILL) re-attaches to the head it left running instead of starting a new
  one and failing the jobs that still run on the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

TOKEN_FILE = "ray-auth-token"
STATE_FILE = "ray-head.json"
LOCK_FILE = "ray-head.lock"
TEMP_SUBDIR = "ray"
#: Ray's temp dir inside the private one (Ray chmods the temp dir itself to 0777)
RAY_TEMP_NAME = "t"
#: Ray puts Unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store;
#: an AF_UNIX path holds at most 107 bytes on Linux, so the private dir may use what is left
_SOCKET_SUFFIX_BYTES = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
_MAX_PRIVATE_DIR_BYTES = 107 - _SOCKET_SUFFIX_BYTES - len(RAY_TEMP_NAME) - 1 - 4  # 4: ".N"


def free_port_flags() -> list[str]:
    """`ray start` flags that move every fixed default port to a free one: any may be
    taken by another Ray on the same machine (the dashboard agent's 52365 above all,
    without which the job API refuses jobs)."""
    flags = (
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--ray-client-server-port",
        "--node-manager-port",
        "--object-manager-port",
    )
    return [f"{flag}={free_port()}" for flag in flags]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600) atomically: a reader sees the old or the new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_or_create_token(data_dir: Path) -> str:
    """The Ray token of this data directory: read from `ray-auth-token`, created on first
    use (256 random bits, hex, as Ray's own generator makes them), always mode 0600."""
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = None
    if fd is not None:
        token = secrets.token_hex(32)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a regular file owned by this user")
    if st.st_mode & 0o077:
        log.warning("%s was readable by others; now mode 0600", path)
        os.chmod(path, 0o600)
    token = path.read_text().strip()
    if len(token) < 32:
        raise RuntimeError(f"{path} holds no usable token (delete it to get a new one)")
    return token


def _private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that the existing one is ours: a directory, not
    a link, owned by this user; it is then made 0700."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError(
                f"{path} exists but is not a directory owned by this user; refusing to "
                "put the Ray head's logs and sockets there"
            ) from None
    os.chmod(path, 0o700)
    return path


def ray_private_dir(data_dir: Path) -> Path:
    """The directory (mode 0700) that holds Ray's temp dir for the head of `data_dir`:
    `<data_dir>/ray`, or, when that path is too long for Ray's Unix sockets,
    `/tmp/alto-ray-<hash of data_dir>`."""
    preferred = data_dir.resolve() / TEMP_SUBDIR
    if len(os.fsencode(preferred)) <= _MAX_PRIVATE_DIR_BYTES:
        return preferred
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16]
    return Path("/tmp") / f"alto-ray-{digest}"


def _proc_start_time(pid: int) -> float | None:
    """The process's start time (psutil's create_time), None when it does not exist."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def head_processes(pid: int, pgid: int | None = None) -> list[Any]:
    """Live (non-zombie) processes of a head: the `ray start` process, its descendants
    (workers and job drivers sit in process groups of their own) and its process group."""
    import psutil

    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    if pgid is not None:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == pgid:
                    found.setdefault(proc.pid, proc)
    alive = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _terminate(pid: int, pgid: int, grace_s: float) -> None:
    """SIGTERM the head's process group, then SIGKILL whatever of it is left after
    `grace_s`, descendants in other process groups included; wait until all are gone."""
    import psutil

    procs = head_processes(pid, pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and head_processes(pid, pgid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    # processes that were there at the start (or appeared since) in other groups
    for proc in {p.pid: p for p in procs + head_processes(pid, pgid)}.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and head_processes(pid, pgid):
        time.sleep(0.1)


class LocalRayHead:
    """`with LocalRayHead(data_dir=d) as head:` gives `head.dashboard_url` (the job API)
    and `head.auth_token` (send it as `Authorization: Bearer ...`).

    With `data_dir`, the token, the state file and (when the path is short enough) Ray's
    temp dir live there, and `start()` re-attaches to a head this data directory left
    running. Without it, a private temporary directory is used and removed on stop.
    """

    def __init__(
        self,
        num_cpus: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        data_dir: Path | None = None,
        node_env: dict[str, str] | None = None,
    ) -> None:
        self.num_cpus = num_cpus
        #: variables the head's processes (and so every job's workers) get: the run
        #: storage's credentials, which must never travel in a job's runtime_env
        self.node_env = dict(node_env or {})
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._scratch = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.auth_token = ""
        self.temp_dir: Path | None = None
        self.dashboard_port = 0
        self.gcs_port = 0
        self.dashboard_url = ""
        self.gcs_address = ""
        #: pid (= process group) of `ray start --block`; None while not running
        self.pid: int | None = None
        #: True when start() found this data directory's head still running and kept it
        self.reattached = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- files in the data directory ---------------------------------------------------

    @property
    def state_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / STATE_FILE

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
            int(state["pid"]), int(state["dashboard_port"]), int(state["gcs_port"])
            return state
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return None

    def _write_state(self, ready: bool) -> None:
        assert self.pid is not None
        state = {
            "pid": self.pid,
            "pgid": self.pid,
            "started": _proc_start_time(self.pid),
            "dashboard_port": self.dashboard_port,
            "gcs_port": self.gcs_port,
            "dashboard_url": self.dashboard_url,
            "gcs_address": self.gcs_address,
            "temp_dir": str(self.temp_dir),
            "ready": ready,
        }
        _write_private(self.state_path, json.dumps(state, indent=1) + "\n")

    def _use_ports(self, dashboard_port: int, gcs_port: int) -> None:
        self.dashboard_port = dashboard_port
        self.gcs_port = gcs_port
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.gcs_address = f"127.0.0.1:{gcs_port}"

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> LocalRayHead:
        """Re-attach to this data directory's running head, or start one; either way
        return once its job API answers to our token."""
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="alto-ray-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # one start at a time per data directory (two services on one dir would otherwise
        # both start a head and overwrite each other's state file)
        with open(self.data_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.auth_token = load_or_create_token(self.data_dir)
            self.temp_dir = _private_dir(ray_private_dir(self.data_dir)) / RAY_TEMP_NAME
            state = self._read_state()
            if state is not None and self._reattach(state):
                return self
            try:
                self._launch()
                self._wait_ready()
            except BaseException:
                self.stop()
                raise
            self._write_state(ready=True)
        return self

    def _reattach(self, state: dict[str, Any]) -> bool:
        """Keep the head the state file names when it is the same process and answers
        to our token; otherwise end what is left of it and forget it."""
        pid = int(state["pid"])
        started = _proc_start_time(pid)
        same = started is not None and started == state.get("started")
        if same:
            self._use_ports(int(state["dashboard_port"]), int(state["gcs_port"]))
            self.pid = pid
            # a head caught mid-start gets the whole start-up time, a ready one a moment
            wait_s = 15.0 if state.get("ready") else self.startup_timeout_s
            if self._answers(wait_s):
                self.reattached = True
                self._write_state(ready=True)
                log.info("re-attached to the Ray head left running (pid %d)", pid)
                return True
            log.warning("the Ray head left running (pid %d) does not answer; replacing it", pid)
            _terminate(pid, pid, grace_s=5.0)
        self.pid = None
        self.state_path.unlink(missing_ok=True)
        return False

    def _answers(self, wait_s: float) -> bool:
        """True once the dashboard refuses a caller without a token and serves us: our
        head, not another Ray that took the port after ours died."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                anon = httpx.get(f"{self.dashboard_url}/api/jobs/", timeout=5)
                if anon.status_code in (401, 403) and self._nodes_alive():
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() >= deadline or (
                self.pid is not None and _proc_start_time(self.pid) is None
            ):
                return False
            time.sleep(0.5)

    def _nodes_alive(self) -> bool:
        r = httpx.get(
            f"{self.dashboard_url}/api/v0/nodes",
            headers={"Authorization": f"Bearer {self.auth_token}"},
            timeout=5,
        )
        return bool(
            r.status_code == 200 and r.json().get("data", {}).get("result", {}).get("result")
        )

    def _launch(self) -> None:
        self._use_ports(free_port(), free_port())
        assert self.temp_dir is not None and self.data_dir is not None
        cmd = [
            _ray_executable(),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--disable-usage-stats",
        ]
        cmd += free_port_flags()
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        env = dict(os.environ)
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
            env.pop(name, None)
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.data_dir.resolve() / TOKEN_FILE),
                # keep 127.0.0.1 as the node address instead of the routable one
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_TMPDIR": str(self.temp_dir),
                # fixed defaults (44227, 44217) another Ray on the host may hold
                "DASHBOARD_METRIC_PORT": str(free_port()),
                "AUTOSCALER_METRIC_PORT": str(free_port()),
            }
        )
        # jobs run `python -m engine.run`: let `python` be this interpreter (the one with
        # the engine installed) even when its virtualenv is not activated
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        env.update(self.node_env)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = out if self.log_path else None
        self._proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            umask=0o077,
        )
        self.pid = self._proc.pid
        if not self._scratch:
            # recorded before it is ready: a crash during start-up must not orphan it
            self._write_state(ready=False)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"`ray start` exited with code {self._proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if self._nodes_alive():
                    return
                last = "no alive node yet"
            except (httpx.HTTPError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(
            f"local Ray head did not answer at {self.dashboard_url} within "
            f"{self.startup_timeout_s:.0f} s ({last})"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """End the head's processes (SIGTERM to its group, SIGKILL after `grace_s`) and
        remove the state file; a scratch data directory is removed too."""
        pid, proc = self.pid, self._proc
        self.pid, self._proc = None, None
        if pid is not None:
            _terminate(pid, pid, grace_s)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.data_dir is not None:
            if self._scratch:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                if self.temp_dir is not None:
                    shutil.rmtree(self.temp_dir.parent, ignore_errors=True)
            elif pid is not None:
                self.state_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
