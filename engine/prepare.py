"""``python -m engine.prepare [SPEC] [--files ...]``: prepare a corpus ahead of the jobs.

Tokenizes a spec's corpus (or the ``--files`` named here) into the shared cache
exactly as a job's preflight would, in parallel as Ray tasks (connecting to
RAY_ADDRESS, or starting a local Ray with ``--workers`` CPUs), and prints the cache
key, the token counts and the throughput.  Every job whose spec names the same
files (same tokenizer, split and key) then finds the datasets ready.
Exit codes: 0 prepared, 2 invalid spec or data.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from alto_client.spec import JobSpec, SpecError, parse_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.prepare",
        description="Tokenize a corpus into megatron indexed datasets in the shared cache.",
    )
    parser.add_argument("spec", nargs="?", help="job spec (.yaml/.json) whose data to prepare")
    parser.add_argument(
        "--files",
        nargs="+",
        metavar="ENTRY",
        help="instead of a spec: files, globs (quote them) or directories/ of .txt/.jsonl",
    )
    parser.add_argument("--tokenizer", choices=["byte", "bpe"], default=None)
    parser.add_argument("--vocab-size", type=int, help="bpe vocabulary size")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a spec field"
    )
    parser.add_argument("--workers", type=int, help="parallel tasks (default: the cluster's CPUs)")
    parser.add_argument(
        "--shard-mb", type=float, default=64.0, help="shard size in MB (default 64)"
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="tokenize in this process, one shard at a time"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-shard progress lines")
    return parser.parse_args(argv)


def _spec(args: argparse.Namespace) -> JobSpec:
    if args.spec and args.files:
        raise SystemExit("give a spec or --files, not both")
    if args.files:
        tok: dict = {"kind": args.tokenizer or "byte"}
        if args.vocab_size:
            tok["vocab_size"] = args.vocab_size
        spec = JobSpec.from_dict(
            {"name": "prepare", "data": {"source": "files", "files": args.files, "tokenizer": tok}},
            "--files",
        )
    elif args.spec:
        spec = JobSpec.load(args.spec)
    else:
        raise SystemExit("give a spec file or --files")
    return spec.with_overrides(parse_overrides(args.set))


def _start_ray(workers: int | None):
    def start() -> None:
        from engine.launch import ensure_ray

        ensure_ray(float(workers) if workers else None)

    return start


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron(\.|$)")
    args = parse_args(argv)
    from engine.data.prepare import prepare_data_with_stats
    from engine.preflight import check_spec_on_machine

    def progress(done: int, total: int, result: dict) -> None:
        if not args.quiet:
            state = "cached" if result.get("cached") else f"{result.get('s', 0):.1f} s"
            print(
                f"  shard {done}/{total}: {result['bytes'] / 1e6:,.1f} MB ({state})",
                file=sys.stderr,
                flush=True,
            )

    try:
        spec = _spec(args)
        problems = check_spec_on_machine(spec)
        if problems:
            raise SpecError(problems, "job spec on this machine")
        if spec.data.source == "indexed":
            raise SpecError([], "nothing to prepare: source 'indexed' is pre-tokenized")
        options: dict = {
            "workers": args.workers or spec.data.prep_workers,
            "shard_bytes": int(args.shard_mb * 1e6),
            "progress": progress,
        }
        if args.no_ray:
            options["use_ray"] = False
        else:
            options["start_ray"] = _start_ray(options["workers"])
            options["ray_min_bytes"] = 0
        prepared, stats = prepare_data_with_stats(spec, **options)
    except SpecError as err:
        print(f"error: {err.source} is invalid:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    per_core = stats.mb_s / max(stats.workers, 1)
    print(f"cache key      {prepared.cache_key}")
    print(f"corpus         {stats.bytes_total / 1e6:,.1f} MB in {stats.shards} shard(s)")
    print(
        f"read           {stats.bytes_read / 1e6:,.1f} MB ({stats.shards_read} shard(s), "
        f"{stats.mode}, {stats.workers} worker(s)); tokenized {stats.bytes_tokenized / 1e6:,.1f} MB "
        f"({stats.shards_tokenized} shard(s), the rest found in the cache by content)"
    )
    print(
        f"wall           {stats.wall_s:,.1f} s: tasks {stats.tasks_s:,.1f} s, merge "
        f"{stats.merge_s:,.1f} s"
        + (f", BPE training {stats.bpe_s:,.1f} s" if stats.bpe_s else "")
        + (f", Ray start {stats.ray_start_s:,.1f} s" if stats.ray_start_s else "")
    )
    if stats.bytes_read:
        cores = max(stats.workers, 1)
        print(
            f"throughput     {stats.mb_s:,.1f} MB/s ({per_core:,.1f} MB/s per core; the "
            f"tasks alone {stats.tasks_mb_s / cores:,.1f} MB/s per core)"
        )
    print(f"train tokens   {stats.train_tokens:,}")
    print(f"valid tokens   {stats.valid_tokens:,}")
    print(f"vocabulary     {prepared.vocab_size} (eod {prepared.eod})")
    if prepared.tokenizer_path:
        print(f"tokenizer      {prepared.tokenizer_path}")
    for c in prepared.blend or [
        {"train_prefix": prepared.train_prefix, "valid_prefix": prepared.valid_prefix}
    ]:
        print(f"train prefix   {c['train_prefix']}")
        print(f"valid prefix   {c['valid_prefix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
