"""Follow a run's metrics.jsonl from the driver: progress bar while training, summary after."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from alto_client import metrics as M


@dataclass
class RunState:
    """What the driver knows from the metric log so far."""

    step: int = 0
    last: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def add(self, point: dict) -> None:
        step, name, value = int(point["step"]), point["name"], float(point["value"])
        self.step = max(self.step, step)
        self.last[name] = value
        self.series.setdefault(name, []).append((step, value))


def read_state(path: Path) -> RunState:
    state = RunState()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                state.add(json.loads(line))
    return state


class MetricFollower:
    """Polls the JSONL (rewritten on resume, so it re-reads from scratch when it shrinks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = RunState()
        self._size = 0
        self._lock = threading.Lock()

    def poll(self) -> RunState:
        with self._lock:
            try:
                size = self.path.stat().st_size
            except OSError:
                return self.state
            if size < self._size:
                self.state, self._size = RunState(), 0
            if size > self._size:
                with self.path.open("rb") as stream:
                    stream.seek(self._size)
                    data = stream.read(size - self._size)
                complete = data[: data.rfind(b"\n") + 1]
                for line in complete.splitlines():
                    if line.strip():
                        self.state.add(json.loads(line))
                self._size += len(complete)
            return self.state


def _eta(state: RunState, total: int) -> str:
    times = state.series.get(M.TRAIN_STEP_TIME_S, [])
    if not times or state.step >= total:
        return "-"
    recent = [v for _, v in times[-10:]]
    seconds = (total - state.step) * sum(recent) / len(recent)
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


def status_line(state: RunState, total: int) -> str:
    """One line for logs: step, loss, tokens/s, ETA."""
    loss = state.last.get(M.TRAIN_LOSS, math.nan)
    tps = state.last.get(M.TRAIN_TOKENS_PER_S, math.nan)
    text = f"step {state.step}/{total}  loss {loss:.4f}  {tps:,.0f} tok/s  eta {_eta(state, total)}"
    if M.VAL_LOSS in state.last:
        text += f"  val {state.last[M.VAL_LOSS]:.4f}"
    return text


class ProgressReporter:
    """A rich progress bar on a terminal, a status line every ``every`` steps otherwise."""

    def __init__(self, follower: MetricFollower, total: int, title: str, tty: bool) -> None:
        self.follower = follower
        self.total = total
        self.title = title
        self.tty = tty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alto-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self.tty:
            self._run_rich()
        else:
            self._run_plain()

    def _run_plain(self) -> None:
        every = max(1, self.total // 20)
        printed = 0
        while True:
            stopping = self._stop.wait(1.0)
            state = self.follower.poll()
            due = state.step >= printed + every or (
                state.step == self.total and printed < self.total
            )
            # the run may end between two polls: its last step is always printed
            if due or (stopping and state.step > printed):
                print(status_line(state, self.total), flush=True)
                printed = state.step
            if stopping:
                return

    def _run_rich(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        ) as bar:
            task = bar.add_task(self.title, total=self.total, info="starting workers...")
            while True:
                state = self.follower.poll()
                if state.step:
                    loss = state.last.get(M.TRAIN_LOSS, math.nan)
                    tps = state.last.get(M.TRAIN_TOKENS_PER_S, math.nan)
                    info = f"loss {loss:.4f}  {tps:,.0f} tok/s  eta {_eta(state, self.total)}"
                    bar.update(task, completed=state.step, info=info)
                if self._stop.wait(0.5):
                    break


def summarize(state: RunState, wall_s: float) -> dict[str, float | int | None]:
    """The numbers a user wants at the end of a run."""

    def mean(name: str, skip_first: bool = True) -> float | None:
        values = [v for s, v in state.series.get(name, []) if not (skip_first and s == 1)]
        values = values or [v for _, v in state.series.get(name, [])]
        return sum(values) / len(values) if values else None

    return {
        "steps": state.step,
        "final_train_loss": state.last.get(M.TRAIN_LOSS),
        "final_val_loss": state.last.get(M.VAL_LOSS),
        "final_val_ppl": state.last.get(M.VAL_PPL),
        "mean_tokens_per_s": mean(M.TRAIN_TOKENS_PER_S),
        "mean_step_time_s": mean(M.TRAIN_STEP_TIME_S),
        "mean_optim_step_time_s": mean(M.OPTIM_STEP_TIME_S),
        "params": state.last.get(M.MODEL_PARAMS),
        "optim_state_bytes": state.last.get(M.OPTIM_STATE_BYTES),
        "peak_rss_bytes": state.last.get(M.MEM_PEAK_RSS_BYTES),
        "peak_allocated_bytes": state.last.get(M.MEM_PEAK_ALLOCATED_BYTES),
        "wall_s": wall_s,
    }
