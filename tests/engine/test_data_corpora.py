"""Real corpora: many files cut into shards, prepared in parallel as Ray tasks, cached by
content, blended; the output is the same bytes whatever ran it."""

from __future__ import annotations

import filecmp
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from alto_client.spec import JobSpec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data import prepare as prep
from engine.data.corpus import load_corpus
from engine.data.indexed import check_indexed, write_indexed
from engine.data.prepare import prepare_data, prepare_data_with_stats
from engine.data.sources import SourceFile, plan_shards, read_piece
from engine.data.tokenizer import BpeTokenizer, ByteTokenizer
from engine.errors import DataError
from engine.preflight import REPEAT_WARN_EPOCHS, preflight, repeat_warning

_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)


def _text(rng: np.random.Generator, n: int) -> bytes:
    """n bytes of word-like ASCII (JSON-safe)."""
    return _ALPHABET[rng.integers(0, 31, n)].tobytes()


def write_jsonl(path: Path, size: int, seed: int, line: int = 2000) -> None:
    """About ``size`` bytes of JSONL lines (~``line`` bytes each, a blank one now and then)."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as out:
        written = 0
        while written < size:
            n = int(min(512, max(8, (size - written) // (line + 20) + 1)))
            block = _text(rng, line * n)
            lines = [
                b'{"id": %d, "text": "%s"}\n' % (written + i, block[i * line : (i + 1) * line])
                for i in range(n)
            ]
            lines[7] = b"\n"  # blank lines are skipped
            data = b"".join(lines)
            out.write(data)
            written += len(data)


def make_corpus(root: Path, jsonl_files: int, jsonl_bytes: int, txt_files: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(jsonl_files):
        write_jsonl(root / f"part-{i:03d}.jsonl", jsonl_bytes, seed=i)
    rng = np.random.default_rng(99)
    for i in range(txt_files):
        (root / "txt").mkdir(exist_ok=True)
        (root / "txt" / f"doc-{i:04d}.txt").write_bytes(
            _text(rng, int(rng.integers(2000, 200_000)))
        )
    return root


def files_spec(entries: list[str], **data) -> JobSpec:
    return JobSpec.from_dict({"data": {"source": "files", "files": entries, **data}})


def same_files(a: str, b: str) -> bool:
    return all(filecmp.cmp(a + s, b + s, shallow=False) for s in (".bin", ".idx"))


@pytest.fixture(scope="module")
def ray_two_cpus():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# ---------------------------------------------------------------- parallel == one process


def test_two_ray_workers_write_the_bytes_one_process_writes(
    ray_two_cpus, tmp_path_factory, monkeypatch
) -> None:
    """A ~300 MB JSONL + text corpus prepared by 2 Ray tasks at a time is byte for byte
    the corpus one process prepares (its own cache: nothing is shared between them)."""
    data = make_corpus(tmp_path_factory.mktemp("big"), 4, 70_000_000, 120)
    spec = files_spec([str(data / "*.jsonl"), str(data / "txt") + "/"])
    timings = {}
    out = {}
    for mode, use_ray in (("one-process", False), ("ray-2", True)):
        monkeypatch.setenv("ALTO_CACHE_DIR", str(tmp_path_factory.mktemp(mode)))
        start = time.perf_counter()
        prepared, stats = prepare_data_with_stats(
            spec, use_ray=use_ray, workers=2, shard_bytes=32_000_000
        )
        timings[mode] = time.perf_counter() - start
        assert stats.mode == ("ray" if use_ray else "in-process")
        assert stats.shards_tokenized == stats.shards >= 10
        out[mode] = (prepared, stats)
    (a, sa), (b, sb) = out["one-process"], out["ray-2"]
    assert sb.workers == 2
    assert same_files(a.train_prefix, b.train_prefix)
    assert same_files(a.valid_prefix, b.valid_prefix)
    assert a.num_train_tokens == b.num_train_tokens and a.cache_key == b.cache_key
    info = check_indexed(a.train_prefix)
    assert info.num_tokens == a.num_train_tokens and info.max_token_id == 256
    valid = check_indexed(a.valid_prefix).num_documents - 1
    train = info.num_documents - 1
    assert 0.03 < valid / (train + valid) < 0.07  # the default 5 % held out, by name hash
    mb = sa.bytes_total / 1e6
    print(
        f"\n{mb:.0f} MB: one process {timings['one-process']:.1f} s "
        f"({mb / sa.wall_s:.1f} MB/s), 2 Ray workers {timings['ray-2']:.1f} s "
        f"({mb / sb.wall_s:.1f} MB/s, {mb / sb.wall_s / 2:.1f} MB/s per core)"
    )


def _reference(spec: JobSpec, tokenizer, tmp: Path) -> tuple[str, str]:
    """The same corpus written the simple way: every document in memory, one write."""
    corpus = load_corpus(spec.data)
    out = []
    for split, docs in (("train", corpus.train), ("valid", corpus.valid)):
        arrays = [np.append(tokenizer.encode(d.data), tokenizer.eod) for d in docs]
        write_indexed(tmp / split, arrays, spec.vocab_size)
        out.append(str(tmp / split))
    return out[0], out[1]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_small_corpus_parallel_equals_in_memory_reference(
    ray_two_cpus, tmp_path, monkeypatch, kind
) -> None:
    data = make_corpus(tmp_path / "corpus", 3, 400_000, 12)
    tok = {"kind": kind} if kind == "byte" else {"kind": "bpe", "vocab_size": 400}
    spec = files_spec([str(data) + "/"], tokenizer=tok, validation_fraction=0.1)
    # this process encodes each 150 KB shard in several batches, the Ray tasks in one
    monkeypatch.setattr(prep, "ENCODE_BATCH_BYTES", 30_000)
    results = []
    for mode, use_ray in (("one", False), ("ray", True)):
        monkeypatch.setenv("ALTO_CACHE_DIR", str(tmp_path / f"cache-{mode}"))
        prepared, stats = prepare_data_with_stats(spec, use_ray=use_ray, shard_bytes=150_000)
        assert stats.shards >= 8 and stats.mode == ("ray" if use_ray else "in-process")
        results.append(prepared)
    a, b = results
    assert same_files(a.train_prefix, b.train_prefix) and same_files(a.valid_prefix, b.valid_prefix)
    if kind == "bpe":
        assert Path(a.tokenizer_path).read_text() == Path(b.tokenizer_path).read_text()
        tokenizer = BpeTokenizer(Path(a.tokenizer_path), 400)
    else:
        tokenizer = ByteTokenizer()
    (tmp_path / "ref").mkdir()
    train, valid = _reference(spec, tokenizer, tmp_path / "ref")
    assert same_files(a.train_prefix, train) and same_files(a.valid_prefix, valid)


def test_a_ray_driver_prepares_with_ray_tasks_by_itself(ray_two_cpus, tmp_path, monkeypatch):
    """No option given: a Ray driver (a launch after ray.init, the CLI) uses tasks, at
    most ``workers`` at a time; a process without Ray calls ``start_ray`` first when
    there is enough to tokenize, and stays in-process when there is not."""
    data = make_corpus(tmp_path / "c", 2, 200_000, 0)
    spec = files_spec([str(data / "*.jsonl")])
    monkeypatch.setenv("ALTO_CACHE_DIR", str(tmp_path / "a"))
    prepared, stats = prepare_data_with_stats(spec, shard_bytes=100_000, workers=1)
    assert stats.mode == "ray" and stats.workers == 1 and stats.shards_tokenized > 2
    monkeypatch.setattr(prep, "ray_driver", lambda: False)
    calls = []
    for minimum, expected in ((10**9, []), (1, ["start"])):
        monkeypatch.setenv("ALTO_CACHE_DIR", str(tmp_path / f"b{minimum}"))
        again, stats = prepare_data_with_stats(
            spec, shard_bytes=100_000, start_ray=lambda: calls.append("start"),
            ray_min_bytes=minimum,
        )  # fmt: skip
        assert calls == expected and stats.mode == "in-process"
        assert same_files(again.train_prefix, prepared.train_prefix)


# ---------------------------------------------------------------- the cache


def test_a_second_job_reuses_everything(cache_dir, tmp_path, monkeypatch) -> None:
    data = make_corpus(tmp_path / "c", 2, 300_000, 4)
    spec = files_spec([str(data / "*.jsonl"), str(data / "txt/*.txt")])
    first, stats = prepare_data_with_stats(spec, shard_bytes=100_000, use_ray=False)
    assert stats.shards_tokenized == stats.shards > 4

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prep, "_write_part", no_tokenizing)
    other_job = spec.with_overrides({"name": "another-job", "training.steps": 7})
    again, stats = prepare_data_with_stats(other_job, shard_bytes=100_000, use_ray=False)
    assert again == first and stats.bytes_tokenized == 0 and stats.mode == "cached"
    # touched (new mtime), same content: read and hashed again, nothing tokenized
    for f in data.glob("*.jsonl"):
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    again, stats = prepare_data_with_stats(other_job, shard_bytes=100_000, use_ray=False)
    assert again == first and stats.shards_tokenized == 0
    assert 0 < stats.shards_read < stats.shards  # the JSONL shards; the .txt ones known
    # a corpus sharing files with this one reuses their parts
    write_jsonl(data / "extra.jsonl", 50_000, seed=7)
    monkeypatch.undo()
    monkeypatch.setenv("ALTO_CACHE_DIR", str(cache_dir))
    grown = files_spec([str(data / "*.jsonl"), str(data / "txt/*.txt")])
    bigger, stats = prepare_data_with_stats(grown, shard_bytes=100_000, use_ray=False)
    assert stats.shards_tokenized == 1 and bigger.num_train_tokens > first.num_train_tokens


def test_changed_content_is_prepared_again(cache_dir, tmp_path) -> None:
    data = make_corpus(tmp_path / "c", 1, 100_000, 2)
    spec = files_spec([str(data) + "/"])
    first = prepare_data(spec)
    (data / "txt" / "doc-0000.txt").write_bytes(b"new words " * 400)
    assert prepare_data(spec).train_prefix != first.train_prefix


def test_a_crashed_part_is_never_taken_for_finished(cache_dir, tmp_path, monkeypatch) -> None:
    data = make_corpus(tmp_path / "c", 1, 200_000, 0)
    spec = files_spec([str(data / "*.jsonl")])
    real = prep._write_part

    def crash(task, tok, datas, out):
        real(task, tok, datas, out)
        raise KeyboardInterrupt  # killed after writing, before the rename

    monkeypatch.setattr(prep, "_write_part", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(spec, shard_bytes=50_000, use_ray=False)
    monkeypatch.setattr(prep, "_write_part", real)
    prepared, stats = prepare_data_with_stats(spec, shard_bytes=50_000, use_ray=False)
    assert stats.shards_tokenized == stats.shards
    assert check_indexed(prepared.train_prefix).num_tokens == prepared.num_train_tokens


# ---------------------------------------------------------------- many files


def test_globs_and_directories_expand_sorted_inside_the_roots(cache_dir, tmp_path, monkeypatch):
    data = make_corpus(tmp_path / "root" / "c", 2, 20_000, 3)
    (data / "notes.md").write_text("not a corpus file")
    monkeypatch.setenv("ALTO_DATA_ROOTS", str(tmp_path / "root"))
    a = load_corpus(files_spec([str(data) + "/"]).data)
    b = load_corpus(files_spec([str(data / "**" / "*.jsonl"), str(data / "**" / "*.txt")]).data)
    c = load_corpus(files_spec([str(data / "part-*.jsonl"), str(data / "txt/doc-*.txt")]).data)
    names = lambda corpus: [d.name for d in corpus.train + corpus.valid]  # noqa: E731
    assert names(a) == names(b) == names(c)
    assert names(a)[0].startswith("part-000.jsonl@") and "doc-0000.txt" in names(a)
    for entry, message in (
        (str(data / "*.txt"), "matches no .txt or .jsonl file"),
        (str(tmp_path / "elsewhere") + "/", "not inside the data roots"),
        (str(tmp_path / "*" / "x.jsonl"), "not inside the data roots"),
        (str(data / "missing.jsonl"), "does not exist"),
    ):
        with pytest.raises(DataError) as info:
            prepare_data(files_spec([str(data / "part-000.jsonl"), entry]))
        assert info.value.problems[0].field == "data.files.1", entry
        assert message in str(info.value) and entry in str(info.value)


def test_bad_jsonl_line_names_file_and_line(cache_dir, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError) as info:
        prepare_data(files_spec([str(bad)]))
    assert f"{bad}:4 is not valid JSON" in str(info.value)


def _lines(files: list[SourceFile]) -> list[tuple[str, int]]:
    out = []
    for f in files:
        offset = 0
        for line in Path(f.path).read_bytes().splitlines(keepends=True):
            out.append((f.path, offset))
            offset += len(line)
    return out


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(
        st.lists(st.integers(0, 300), min_size=0, max_size=40), min_size=1, max_size=4
    ),
    shard_bytes=st.integers(1, 2000),
    cap=st.one_of(st.none(), st.integers(1, 20_000)),
    trailing_newline=st.booleans(),
)
def test_every_line_lands_in_exactly_one_shard(
    tmp_path_factory, lengths, shard_bytes, cap, trailing_newline
) -> None:
    from engine.data.sources import _source_file

    root = tmp_path_factory.mktemp("cut")
    files = []
    for i, sizes in enumerate(lengths):
        text = b"\n".join(b"x" * n for n in sizes)
        if trailing_newline and text:
            text += b"\n"
        path = root / f"f{i}.jsonl"
        path.write_bytes(text)
        files.append(_source_file(str(path), path.name, f"data.files.{i}"))
    shards = plan_shards(files, shard_bytes, cap)
    seen = []
    for shard in shards:
        assert shard.num_bytes <= max(shard_bytes, max(p.num_bytes for p in shard.pieces))
        for piece in shard.pieces:
            data = read_piece(piece)
            assert piece.start == 0 or Path(piece.file.path).read_bytes()[piece.start - 1] == 10
            offset = piece.start
            for line in data.splitlines(keepends=True):
                seen.append((piece.file.path, offset))
                offset += len(line)
    every = _lines(files)
    if cap is None:
        assert seen == every  # each line once, in file order
    else:
        assert seen == every[: len(seen)]  # a prefix of the lines, cut at a line end
        assert sum(s.num_bytes for s in shards) <= cap


# ---------------------------------------------------------------- blends


def test_a_blend_trains_through_megatrons_builder(cache_dir, tmp_path) -> None:
    from engine.worker.data import build_datasets

    web = make_corpus(tmp_path / "web", 1, 300_000, 0)
    code = tmp_path / "code"
    code.mkdir()
    for i in range(40):
        (code / f"m{i}.txt").write_text("def f(x):\n    return x\n" * 200)
    spec = JobSpec.from_dict(
        {
            "model": {"seq_length": 64},
            "training": {"steps": 4, "global_batch_size": 8, "micro_batch_size": 4},
            "data": {
                "source": "blend",
                "blend": [
                    {"files": [str(web / "*.jsonl")], "weight": 0.75},
                    {"files": [str(code) + "/"], "weight": 0.25},
                ],
            },
        }
    )
    prepared = prepare_data(spec)
    assert [c["weight"] for c in prepared.blend] == [0.75, 0.25]
    assert prepared.num_train_tokens == sum(c["num_train_tokens"] for c in prepared.blend)
    datasets = build_datasets(spec, prepared)
    from_code = 0
    for i in range(len(datasets.train)):
        tokens = bytes(t for t in datasets.train[i]["tokens"].tolist() if t < 256)
        from_code += b"return" in tokens or b"def f" in tokens
    share = from_code / len(datasets.train)
    assert 0.1 < share < 0.45, share  # about a quarter of the samples
    assert datasets.valid is not None and len(datasets.valid) >= 2 * 8


def test_a_blend_of_indexed_datasets_splits_each(cache_dir, tmp_path) -> None:
    from engine.worker.data import dataset_blend

    for name in ("a", "b"):
        write_indexed(tmp_path / name, [np.arange(50) % 250 for _ in range(40)], vocab_size=257)
    spec = JobSpec.from_dict(
        {
            "data": {
                "source": "blend",
                "blend": [
                    {"path": str(tmp_path / "a"), "weight": 2},
                    {"path": str(tmp_path / "b.bin"), "weight": 1},
                ],
                "tokenizer": {"kind": "byte"},
            }
        }
    )
    prepared = prepare_data(spec)
    assert dataset_blend(prepared) == {
        "blend": ([str(tmp_path / "a"), str(tmp_path / "b")], [2.0, 1.0]),
        "split": "95,5,0",
    }


# ---------------------------------------------------------------- repeat warning


def test_preflight_warns_when_the_budget_repeats_the_data(
    cache_dir, tmp_path, capsys, caplog
) -> None:
    data = make_corpus(tmp_path / "c", 1, 100_000, 0)
    spec = files_spec([str(data / "*.jsonl")]).with_overrides(
        {"training.steps": 400, "training.global_batch_size": 8, "model.seq_length": 128}
    )
    prepared = preflight(spec, start_ray=False)
    epochs = 400 * 8 * 128 / prepared.num_train_tokens
    assert epochs > REPEAT_WARN_EPOCHS
    err = capsys.readouterr().err + caplog.text  # stderr, or logging when it is set up
    assert f"repeats the training data {epochs:,.1f} times" in err
    assert f"from {prepared.num_train_tokens:,} prepared training tokens" in err
    few = spec.with_overrides({"training.steps": 10})
    assert repeat_warning(few, prepared) is None
    caplog.clear()
    preflight(few, start_ray=False)
    assert "repeats" not in capsys.readouterr().err + caplog.text


def test_repeat_warning_weighs_blend_components() -> None:
    prepared = prep.PreparedData(
        train_prefix="a", valid_prefix="a", split=None, vocab_size=257, eod=256,
        index_cache_dir="x", num_train_tokens=1_100_000,
        blend=[
            {"train_prefix": "a", "valid_prefix": "a", "weight": 0.5, "num_train_tokens": 1_000_000},
            {"train_prefix": "b", "valid_prefix": "b", "weight": 0.5, "num_train_tokens": 100_000},
        ],
    )  # fmt: skip
    spec = JobSpec.from_dict(
        {"training": {"steps": 100, "global_batch_size": 8}, "model": {"seq_length": 128}}
    )
    # 102,400 tokens: 0.1 passes overall, but half of them from a 100k-token corpus
    assert repeat_warning(spec, prepared) is None
    spec = spec.with_overrides({"training.steps": 1000})
    warning = repeat_warning(spec, prepared)
    assert warning and "5.1 times (data.blend.1)" in warning


# ---------------------------------------------------------------- the CLI


def test_prepare_cli_prints_key_tokens_and_throughput(cache_dir, tmp_path, capsys) -> None:
    from engine.prepare import main

    data = make_corpus(tmp_path / "c", 1, 200_000, 3)
    assert main(["--files", str(data) + "/", "--no-ray", "--shard-mb", "0.1"]) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(None, 1) for line in out.splitlines() if line and line[0] != " ")
    prepared = prepare_data(files_spec([str(data) + "/"]), shard_bytes=100_000)
    assert prepared.cache_key in out and f"{prepared.num_train_tokens:,}" in out
    assert "MB/s per core" in out and "in-process" in out, fields
    assert main(["--files", str(tmp_path / "none") + "/", "--no-ray"]) == 2
    assert "data.files.0" in capsys.readouterr().err


def test_stdlib_corpus_still_prepares_quickly(cache_dir) -> None:
    spec = JobSpec.from_dict({"data": {"max_bytes": 2_000_000}})
    start = time.perf_counter()
    prepared = prepare_data(spec)
    assert time.perf_counter() - start < 30
    assert check_indexed(prepared.valid_prefix).num_documents > 2
    assert json.loads(prepared.to_json())["cache_key"] == prepared.cache_key


@pytest.mark.parametrize("vocab", [257, 70_000])
def test_the_task_writer_writes_megatrons_bytes(tmp_path, vocab) -> None:
    from engine.data.indexed import IndexWriter, token_dtype

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab, int(n)) for n in rng.integers(1, 500, 50)]
    write_indexed(tmp_path / "megatron", docs, vocab)
    writer = IndexWriter(tmp_path / "ours", token_dtype(vocab))
    for d in docs:
        writer.add(d)
    writer.finalize()
    assert same_files(str(tmp_path / "megatron"), str(tmp_path / "ours"))


def test_a_corpus_with_no_document_held_out_holds_out_the_nearest(cache_dir, tmp_path) -> None:
    """As load_corpus does: when the hash puts no document into validation, the one
    closest to it is moved there (here from the middle of the second shard)."""
    data = make_corpus(tmp_path / "c", 2, 30_000, 0)
    spec = files_spec([str(data / "*.jsonl")], validation_fraction=1e-9)
    prepared = prepare_data(spec, shard_bytes=10_000, use_ray=False)
    (tmp_path / "ref").mkdir()
    train, valid = _reference(spec, ByteTokenizer(), tmp_path / "ref")
    assert same_files(prepared.train_prefix, train) and same_files(prepared.valid_prefix, valid)
    assert check_indexed(prepared.valid_prefix).num_sequences == 1
    tiny = tmp_path / "one.jsonl"
    tiny.write_text('{"text": "only one"}\n')
    with pytest.raises(DataError, match="at least 2 are needed"):
        prepare_data(files_spec([str(tiny)]), use_ray=False)


def test_a_task_that_cannot_see_the_cache_sends_its_part_back(cache_dir, tmp_path) -> None:
    """A task on a node without the driver's cache (no shared ALTO_CACHE_DIR) returns
    the part's files; the driver installs them and the corpus is the same."""
    data = make_corpus(tmp_path / "c", 1, 50_000, 0)
    spec = files_spec([str(data / "*.jsonl")])
    prepared = prepare_data(spec, use_ray=False)
    (shard,) = plan_shards(prep.corpus_request(spec).components[0], 1 << 20)
    task = prep.ShardTask(shard, "text", 0.05, str(cache_dir / "datasets"), "/nonexistent/marker")
    result = prep.run_shard(task, prep.TokenizerRef("byte", 257))
    assert set(result["files"]) == {"train.bin", "train.idx", "valid.bin", "valid.idx", "part.json"}
    elsewhere = tmp_path / "other-cache" / "datasets"
    prep._install_part(elsewhere, result)
    part = prep._part_dir(elsewhere, result["key"])
    original = prep._part_dir(cache_dir / "datasets", result["key"])
    for name in ("train", "valid"):
        assert same_files(str(part / name), str(original / name))
    assert check_indexed(str(part / "train")).num_tokens <= prepared.num_train_tokens
