"""Turn a spec's data section into megatron indexed datasets on this machine.

Everything goes through one road: the built-in corpus and text/JSONL files are
tokenized once and written as megatron indexed datasets under a directory named
by the content hash of (corpus, tokenizer), so the driver and every worker on a
node share one copy; a user's own indexed dataset is checked and used as is.
A file lock makes concurrent preparation (two workers, two jobs) safe.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from alto_client.spec import BYTE_VOCAB_SIZE, JobSpec

from engine.data.corpus import Corpus, corpus_digest, load_corpus
from engine.data.indexed import check_indexed, write_indexed
from engine.data.roots import check_cache_outside_roots, resolve_in_roots
from engine.data.tokenizer import BpeTokenizer, ByteTokenizer, Tokenizer, train_bpe
from engine.errors import DataError

FORMAT_VERSION = 1  # bump to invalidate caches when the on-disk layout changes


@dataclass(frozen=True)
class PreparedData:
    """Where a job's tokens are and what vocabulary they use."""

    train_prefix: str
    valid_prefix: str | None
    """None: one dataset split by ``split`` (a user's own indexed dataset)."""
    split: str | None
    vocab_size: int
    eod: int
    index_cache_dir: str
    """Where megatron caches its sample/shuffle indices for these datasets."""
    num_train_tokens: int
    tokenizer_path: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PreparedData:
        return cls(**json.loads(text))


def default_cache_dir() -> Path:
    """``$ALTO_CACHE_DIR``, else ``~/.cache/alto``: a setting of the machine (the
    service's operator passes it to jobs), never of a spec, because megatron loads the
    index files it caches there with pickle allowed."""
    env = os.environ.get("ALTO_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "alto"
    check_cache_outside_roots(path)
    return path


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_data(spec: JobSpec) -> PreparedData:
    """Check or build the job's indexed datasets; idempotent and cheap when cached."""
    if spec.data.source == "indexed":
        return _prepare_indexed(spec)
    return _prepare_corpus(spec)


def _prepare_indexed(spec: JobSpec) -> PreparedData:
    assert spec.data.path is not None
    prefix = str(resolve_in_roots(indexed_prefix(spec.data.path), "data.path"))
    info = check_indexed(prefix, "data.path")
    tok = spec.data.tokenizer
    vocab = spec.vocab_size
    if tok.kind == "byte":
        eod = BYTE_VOCAB_SIZE - 1
    else:
        eod = tok.eod_id if tok.eod_id is not None else vocab - 1
    if info.max_token_id >= vocab:
        raise DataError(
            "data.tokenizer.vocab_size",
            f"{prefix}.bin holds token id {info.max_token_id}, outside the vocabulary of "
            f"{vocab}; set data.tokenizer.vocab_size to at least {info.max_token_id + 1}",
        )
    f = spec.data.validation_fraction
    digest = hashlib.sha256(f"{Path(prefix).resolve()}:{info.num_tokens}".encode()).hexdigest()
    return PreparedData(
        train_prefix=prefix,
        valid_prefix=None,
        split=f"{100 * (1 - f):.6g},{100 * f:.6g},0",
        vocab_size=vocab,
        eod=eod,
        index_cache_dir=str(default_cache_dir() / "indices" / digest[:20]),
        num_train_tokens=int(info.num_tokens * (1 - f)),
    )


def indexed_prefix(path: str) -> str:
    """The dataset prefix of a `data.path` given with or without its .bin/.idx suffix."""
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _tokenizer_key(spec: JobSpec) -> str:
    tok = spec.data.tokenizer
    return f"{tok.kind}:{spec.vocab_size}"


def _prepare_corpus(spec: JobSpec) -> PreparedData:
    corpus = load_corpus(spec.data)
    digest = hashlib.sha256(
        f"v{FORMAT_VERSION}:{_tokenizer_key(spec)}:{corpus_digest(corpus)}".encode()
    ).hexdigest()[:20]
    root = default_cache_dir() / "datasets" / digest
    meta_path = root / "prepared.json"
    with _locked(root.with_suffix(".lock")):
        if meta_path.is_file():
            return PreparedData.from_json(meta_path.read_text())
        root.mkdir(parents=True, exist_ok=True)
        tokenizer, tok_path = _make_tokenizer(spec, corpus, root)
        sizes = {}
        for split, docs in (("train", corpus.train), ("valid", corpus.valid)):
            arrays = [np.append(tokenizer.encode(d.data), tokenizer.eod) for d in docs]
            write_indexed(root / split, arrays, spec.vocab_size)
            sizes[split] = sum(len(a) for a in arrays)
        prepared = PreparedData(
            train_prefix=str(root / "train"),
            valid_prefix=str(root / "valid"),
            split=None,
            vocab_size=spec.vocab_size,
            eod=tokenizer.eod,
            index_cache_dir=str(root / "indices"),
            num_train_tokens=sizes["train"],
            tokenizer_path=tok_path,
        )
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(prepared.to_json())
        tmp.replace(meta_path)
        return prepared


def _make_tokenizer(spec: JobSpec, corpus: Corpus, root: Path) -> tuple[Tokenizer, str | None]:
    if spec.data.tokenizer.kind == "byte":
        return ByteTokenizer(), None
    path = root / "bpe.json"
    if not path.is_file():
        train_bpe(corpus.train, spec.vocab_size, path)
    return BpeTokenizer(path, spec.vocab_size), str(path)


def load_tokenizer(prepared: PreparedData) -> Tokenizer | None:
    """The tokenizer that made ``prepared`` (None for pre-tokenized external data)."""
    if prepared.tokenizer_path:
        return BpeTokenizer(Path(prepared.tokenizer_path), prepared.vocab_size)
    if prepared.vocab_size == BYTE_VOCAB_SIZE and prepared.eod == BYTE_VOCAB_SIZE - 1:
        return ByteTokenizer()
    return None
