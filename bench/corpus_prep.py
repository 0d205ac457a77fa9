"""Corpus preparation throughput: MB of JSONL/text tokenized per second per core.

Generates a corpus (JSONL files and a directory of .txt files), then prepares it with
1 and with 2 Ray workers (tasks of one CPU each, a fresh cache each time) and, as
the named baseline, in this one process; every run writes the same bytes (checked).
Prints MB/s and MB/s per core of each run and the ratios against the 1-worker run
measured here; the last line is ``prep_mb_s_per_core=X`` (the 2-worker run).

    python bench/corpus_prep.py [--mb 256] [--tokenizer byte|bpe] [--shard-mb 32]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)


def generate(root: Path, megabytes: float, seed: int = 0) -> None:
    """~90% JSONL (2 KB documents, files of 32 MB) and ~10% .txt files (2-200 KB)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    jsonl_bytes = int(megabytes * 0.9e6)
    written, index = 0, 0
    while written < jsonl_bytes:
        with (root / f"part-{index:04d}.jsonl").open("wb") as out:
            in_file = 0
            while in_file < 32e6 and written < jsonl_bytes:
                block = _ALPHABET[rng.integers(0, 31, 2000 * 512)].tobytes()
                data = b"".join(
                    b'{"text": "%s"}\n' % block[i * 2000 : (i + 1) * 2000] for i in range(512)
                )
                out.write(data)
                in_file += len(data)
                written += len(data)
        index += 1
    (root / "txt").mkdir(exist_ok=True)
    txt_bytes, index = 0, 0
    while txt_bytes < megabytes * 0.1e6:
        n = int(rng.integers(2000, 200_000))
        (root / "txt" / f"doc-{index:05d}.txt").write_bytes(
            _ALPHABET[rng.integers(0, 31, n)].tobytes()
        )
        txt_bytes += n
        index += 1


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=256.0, help="corpus size in MB")
    parser.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--shard-mb", type=float, default=32.0)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()

    import ray
    from alto_client.spec import JobSpec

    from engine.data.prepare import prepare_data_with_stats

    work = args.keep or Path(tempfile.mkdtemp(prefix="alto-corpus-bench-"))
    corpus = work / "corpus"
    if not corpus.exists():
        t = time.perf_counter()
        generate(corpus, args.mb)
        print(f"generated {args.mb:.0f} MB in {time.perf_counter() - t:.1f} s: {corpus}")
    tok = {"kind": "byte"}
    if args.tokenizer == "bpe":
        tok = {"kind": "bpe", "vocab_size": args.vocab_size, "sample_bytes": 8_000_000}
    spec = JobSpec.from_dict(
        {
            "data": {
                "source": "files",
                "files": [str(corpus / "*.jsonl"), str(corpus / "txt") + "/"],
                "tokenizer": tok,
            }
        }
    )
    shard_bytes = int(args.shard_mb * 1e6)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    def run(label: str, workers: int, use_ray: bool) -> dict:
        cache = work / f"cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["ALTO_CACHE_DIR"] = str(cache)
        prepared, stats = prepare_data_with_stats(
            spec, use_ray=use_ray, workers=workers, shard_bytes=shard_bytes
        )
        assert stats.shards_tokenized == stats.shards, stats
        return {
            "label": label,
            "cores": workers,
            "mb": stats.bytes_read / 1e6,
            "s": stats.wall_s,
            "bpe_s": stats.bpe_s,
            "tasks_s": stats.tasks_s,
            "merge_s": stats.merge_s,
            "tasks_mb_s": stats.bytes_read / 1e6 / stats.tasks_s,
            "mb_s": stats.mb_s,
            "per_core": stats.mb_s / workers,
            "prefix": prepared.train_prefix,
            "shards": stats.shards,
        }

    # warm-up: start both Ray worker processes and import everything once
    warm = work / "warm"
    generate(warm, 4, seed=1)
    os.environ["ALTO_CACHE_DIR"] = str(work / "cache-warm")
    prepare_data_with_stats(
        spec.with_overrides({"data.files": [str(warm / "*.jsonl")]}),
        use_ray=True,
        workers=2,
        shard_bytes=1_000_000,
    )
    runs = [
        run("in-process", 1, False),
        run("ray-1", 1, True),
        run("ray-2", 2, True),
    ]
    for r in runs[1:]:
        for suffix in (".bin", ".idx"):
            same = filecmp.cmp(runs[0]["prefix"] + suffix, r["prefix"] + suffix, shallow=False)
            assert same, f"{r['label']} wrote other bytes than one process"
    base = runs[1]
    print(
        f"\n{base['mb']:.0f} MB, {base['shards']} shards, tokenizer {args.tokenizer}, "
        f"{os.cpu_count()} CPUs on this machine; every run wrote the same bytes"
    )
    print(
        "| run | cores | wall s | tasks s | merge s | MB/s | MB/s per core "
        "| per core vs ray-1 | tasks MB/s per core |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['label']} | {r['cores']} | {r['s']:.1f} | {r['tasks_s']:.1f} | "
            f"{r['merge_s']:.1f} | {r['mb_s']:.1f} | {r['per_core']:.1f} | "
            f"{r['per_core'] / base['per_core']:.2f}x | {r['tasks_mb_s'] / r['cores']:.1f} |"
        )
    two = runs[2]
    print(f"speed-up 2 workers vs 1: {two['mb_s'] / base['mb_s']:.2f}x")
    ray.shutdown()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prep_mb_s_per_core={two['per_core']:.1f}")


if __name__ == "__main__":
    main()
