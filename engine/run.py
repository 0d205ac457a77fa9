"""``python -m engine.run SPEC [--out DIR]``: train one job spec on Ray Train.

SPEC is a YAML/JSON file or ``env:NAME`` (the JSON spec in environment variable
NAME; the service passes specs that way through the Ray job's runtime_env).
Exit codes: 0 trained, 1 training failed, 2 invalid spec or data, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from alto_client.spec import JobSpec, SpecError, SpecProblem, parse_overrides

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def load_spec(source: str) -> JobSpec:
    """A spec from a file path or ``env:NAME``; SpecError names what is wrong."""
    if source.startswith("env:"):
        name = source[4:]
        text = os.environ.get(name)
        if text is None:
            raise SpecError([SpecProblem("", f"environment variable {name!r} is not set")], source)
        return JobSpec.from_json(text)
    return JobSpec.load(source)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.run", description="Train a megatron-core GPT job spec on Ray Train."
    )
    parser.add_argument("spec", help="spec file (.yaml/.yml/.json) or env:NAME")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    parser.add_argument("--steps", type=int, help="override training.steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a spec field, e.g. --set optimizer.name=adamw (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--check", action="store_true", help="validate spec and data, then exit")
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = parse_overrides(args.set)
    if args.steps is not None:
        out["training.steps"] = args.steps
    return out


def _print_problems(err: SpecError) -> None:
    print(f"error: {err.source} is invalid:", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


def _format_summary(summary: dict[str, Any]) -> str:
    def fmt(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key.endswith("bytes"):
            return f"{value / 2**20:,.1f} MiB"
        if key == "params":
            return f"{value / 1e6:,.2f} M"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.4g}"
        return str(value)

    width = max(len(k) for k in summary)
    return "\n".join(f"  {k.ljust(width)}  {fmt(k, v)}" for k, v in summary.items())


def main(argv: list[str] | None = None) -> int:
    # megatron warns at import that TE/apex are missing; the fallbacks are intended
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron(\.|$)")
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec).with_overrides(_overrides(args))
        if args.check:
            from engine.preflight import preflight

            prepared = preflight(spec)
            print(
                f"ok: {spec.name}: {prepared.num_train_tokens:,} training tokens, "
                f"vocabulary {prepared.vocab_size}"
            )
            return EXIT_OK
    except SpecError as err:
        _print_problems(err)
        return EXIT_INVALID

    from engine.launch import default_run_dir, launch
    from engine.progress import MetricFollower, ProgressReporter, read_state, summarize
    from engine.reporting import METRICS_FILE

    run_dir = (args.out or default_run_dir(spec)).resolve()
    print(
        f"{spec.name}: {spec.resources.workers} {spec.resources.device} worker(s), "
        f"{spec.training.steps} steps, optimizer {spec.optimizer.name}; run dir {run_dir}",
        flush=True,
    )
    follower = MetricFollower(run_dir / METRICS_FILE)
    tty = sys.stdout.isatty() and not args.no_progress
    start = time.monotonic()
    try:
        with ProgressReporter(follower, spec.training.steps, spec.name, tty):
            result = launch(spec, run_dir)
    except SpecError as err:
        _print_problems(err)
        return EXIT_INVALID
    except KeyboardInterrupt:
        state = read_state(run_dir / METRICS_FILE)
        print(
            f"\ninterrupted at step {state.step}/{spec.training.steps}; "
            f"metrics and checkpoints are in {run_dir}",
            file=sys.stderr,
        )
        _shutdown_ray()
        return EXIT_INTERRUPTED
    summary = summarize(read_state(run_dir / METRICS_FILE), time.monotonic() - start)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if not result.ok:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        print(_format_summary(summary), file=sys.stderr)
        return EXIT_FAILED
    print(f"done: {spec.name} in {summary['wall_s']:.1f} s")
    print(_format_summary(summary))
    return EXIT_OK


def _shutdown_ray() -> None:
    """Stop the job by shutting Ray down (workers die with their owner); Ctrl-C is
    ignored meanwhile so a second one cannot leave Ray half shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # best effort while exiting on Ctrl-C
        print(f"warning: Ray did not shut down cleanly: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
