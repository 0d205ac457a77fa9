"""Corpus -> tokenizer -> megatron indexed dataset, and the checks on anyone's .idx/.bin."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from alto_client.spec import DataSpec, JobSpec

from engine.data.corpus import corpus_digest, load_corpus
from engine.data.indexed import check_indexed, write_indexed
from engine.data.prepare import prepare_data
from engine.data.tokenizer import BpeTokenizer, ByteTokenizer, train_bpe
from engine.errors import DataError


def files_spec(files: list[str], **data) -> JobSpec:
    return JobSpec.from_dict({"data": {"source": "files", "files": files, **data}})


def test_stdlib_corpus_split_is_deterministic_by_file() -> None:
    spec = DataSpec(max_bytes=300_000, validation_fraction=0.2)
    a, b = load_corpus(spec), load_corpus(spec)
    assert [d.name for d in a.valid] == [d.name for d in b.valid]
    assert corpus_digest(a) == corpus_digest(b)
    names_train = {d.name for d in a.train}
    assert a.valid and a.train and not names_train & {d.name for d in a.valid}
    assert all(d.name.endswith(".py") for d in a.train)
    assert 0.95 * 300_000 <= a.num_bytes <= 300_000  # filled up to the cap, never over


def test_text_and_jsonl_documents(text_files: list[str]) -> None:
    corpus = load_corpus(files_spec(text_files).data)
    names = sorted(d.name for d in corpus.train + corpus.valid)
    assert len(names) == 7  # 3 .txt + 4 JSONL lines
    assert "more.jsonl@0" in names  # a JSONL document is named by its line's byte offset


def test_bad_jsonl_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError) as info:
        load_corpus(files_spec([str(bad)]).data)
    assert info.value.problems[0].field == "data.jsonl_key"
    assert "bad.jsonl:2" in str(info.value)


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo".encode())
    assert ids.max() < 256 and tok.decode(ids) == "héllo"


def test_bpe_trains_locally_and_round_trips(tmp_path: Path, text_files: list[str]) -> None:
    corpus = load_corpus(files_spec(text_files).data)
    path = tmp_path / "bpe.json"
    train_bpe(corpus.train, 300, path)
    tok = BpeTokenizer(path, 300)
    text = "def f(x):\n    return x * 2\n"
    ids = tok.encode(text.encode())
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges were learned
    assert 0 <= tok.eod < 300


def test_indexed_round_trip_through_megatron(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6])]
    write_indexed(tmp_path / "d", docs, vocab_size=257)
    info = check_indexed(str(tmp_path / "d"))
    assert (info.num_sequences, info.num_documents, info.num_tokens) == (3, 4, 6)
    assert info.max_token_id == 6 and info.dtype == np.uint16
    ds = IndexedDataset(str(tmp_path / "d"))
    assert [list(ds[i]) for i in range(3)] == [[1, 2, 3], [4, 5], [6]]


@pytest.fixture
def good_prefix(tmp_path: Path) -> str:
    write_indexed(tmp_path / "good", [np.arange(10), np.arange(5)], vocab_size=257)
    return str(tmp_path / "good")


def _corrupt(prefix: str, how: str) -> None:
    idx = Path(prefix + ".idx")
    raw = bytearray(idx.read_bytes())
    if how == "truncated":
        idx.write_bytes(bytes(raw[:-5]))
    elif how == "magic":
        raw[:4] = b"JUNK"
        idx.write_bytes(bytes(raw))
    elif how == "version":
        raw[9:17] = struct.pack("<Q", 7)
        idx.write_bytes(bytes(raw))
    elif how == "dtype":
        raw[17] = 99
        idx.write_bytes(bytes(raw))
    elif how == "lengths":
        raw[34:38] = struct.pack("<i", 11)  # first sequence one token longer than stored
        idx.write_bytes(bytes(raw))
    elif how == "bin":
        Path(prefix + ".bin").write_bytes(Path(prefix + ".bin").read_bytes()[:-2])
    elif how == "empty":
        idx.write_bytes(b"")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "truncated or corrupt"),
        ("magic", "bad magic"),
        ("version", "version 7"),
        ("dtype", "unknown token dtype code 99"),
        ("lengths", "pointers do not match"),
        ("bin", "does not match"),
        ("empty", "shorter than the 34-byte header"),
    ],
)
def test_corrupt_index_is_a_clear_error(good_prefix: str, how: str, message: str) -> None:
    _corrupt(good_prefix, how)
    with pytest.raises(DataError) as info:
        check_indexed(good_prefix)
    assert info.value.problems[0].field == "data.path"
    assert message in str(info.value)
    assert good_prefix in str(info.value)


def test_prepare_corpus_is_cached_by_content(cache_dir: Path, text_files: list[str]) -> None:
    spec = files_spec(text_files)
    first = prepare_data(spec)
    assert first == prepare_data(spec)  # the cached description comes back
    assert Path(first.train_prefix + ".bin").is_file() and first.valid_prefix
    assert check_indexed(first.train_prefix).max_token_id == 256  # EOD appended
    Path(text_files[0]).write_text("changed content\n" * 30)
    assert prepare_data(spec).train_prefix != first.train_prefix


def test_prepare_indexed_checks_vocabulary(cache_dir: Path, tmp_path: Path) -> None:
    write_indexed(tmp_path / "ext", [np.array([5, 900, 7]), np.array([1, 2])], vocab_size=1000)
    spec = JobSpec.from_dict(
        {
            "data": {
                "source": "indexed",
                "path": str(tmp_path / "ext.idx"),
                "tokenizer": {"kind": "external", "vocab_size": 512},
            }
        }
    )
    with pytest.raises(DataError, match="token id 900, outside the vocabulary of 512"):
        prepare_data(spec)
    ok = spec.with_overrides({"data.tokenizer": {"kind": "external", "vocab_size": 1000}})
    prepared = prepare_data(ok)
    assert prepared.train_prefix == str(tmp_path / "ext") and prepared.eod == 999
    assert prepared.split == "95,5,0"
