"""A stand-in for `python -m engine.run SPEC` used where the real engine would only cost
time: it reads the spec the service hands over (env:NAME), then reports a deterministic
loss curve like the engine does -- buffered, retried until the service takes it, with
the job's bearer token -- and exits 0. Usage: standin_engine.py env:ALTO_JOB_SPEC

Knobs (environment): STANDIN_STEP_S, seconds per step (default 0.2).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import httpx


def loss(optimizer: str, seed: int, step: int) -> float:
    rate = 4.0 if optimizer == "alto" else 6.0
    return 1.5 + 4.0 * math.exp(-step / rate) + 0.01 * (seed % 7)


def main() -> int:
    arg = sys.argv[1]
    if arg.startswith("env:"):
        spec = json.loads(os.environ[arg.split(":", 1)[1]])
    else:
        with open(arg) as f:
            spec = json.load(f)
    report = spec["report"]
    url = f"{report['url']}/v1/jobs/{report['job_id']}/metrics"
    headers = {"Authorization": f"Bearer {report['token']}"}
    steps = spec["training"]["steps"]
    every = spec["training"]["eval_interval"] or steps
    seed = spec["training"]["seed"]
    opt = spec["optimizer"]["name"]
    step_s = float(os.environ.get("STANDIN_STEP_S", "0.2"))
    pending: list[dict] = []
    client = httpx.Client(timeout=5)

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        try:
            r = client.post(url, json={"points": pending}, headers=headers)
            if r.status_code == 200:
                pending = []
            else:
                print(f"report answered {r.status_code}: {r.text[:200]}", flush=True)
        except httpx.HTTPError as exc:
            print(f"report failed, will retry: {exc}", flush=True)

    for step in range(1, steps + 1):
        time.sleep(step_s)
        now = time.time()
        value = loss(opt, seed, step)
        pending.append({"step": step, "name": "train/loss", "value": value, "time": now})
        pending.append(
            {
                "step": step,
                "name": "train/tokens_per_s",
                "value": 1000.0 if opt == "alto" else 1100.0,
                "time": now,
            }
        )
        if step % every == 0:
            pending.append({"step": step, "name": "val/loss", "value": value + 0.1, "time": now})
        print(f"step {step} loss {value:.4f}", flush=True)
        flush()
    pending.append(
        {
            "step": steps,
            "name": "mem/peak_rss_bytes",
            "value": 2.0e8 if opt == "alto" else 1.8e8,
            "time": time.time(),
        }
    )
    pending.append(
        {
            "step": steps,
            "name": "optim/state_bytes",
            "value": 3.0e6 if opt == "alto" else 2.0e6,
            "time": time.time(),
        }
    )
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        flush()
        if pending:
            time.sleep(0.5)
    return 0 if not pending else 1


if __name__ == "__main__":
    sys.exit(main())
