"""Documents of a corpus in memory, split deterministically: for small corpora and tests.

The preparation road (engine.data.prepare) streams shards instead and never holds a
corpus in memory; both name and split documents the same way (engine.data.sources):
by document *name* hash, never by position or by machine order, so the same corpus
gives the same train/validation split on every machine and in every run; the stdlib
corpus is split by file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from alto_client.spec import DataSpec

from engine.data.sources import (
    DEFAULT_SHARD_BYTES,
    expand_files,
    iter_documents,
    plan_shards,
    read_piece,
    select_stdlib,
    stdlib_files,
    stdlib_root,
    unit,
)
from engine.errors import DataError

__all__ = ["Corpus", "Document", "corpus_digest", "load_corpus", "stdlib_root"]


@dataclass(frozen=True)
class Document:
    """One training document: a stable name (for splitting/hashing) and its UTF-8 bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Corpus:
    train: list[Document]
    valid: list[Document]

    @property
    def num_bytes(self) -> int:
        return sum(len(d.data) for d in self.train) + sum(len(d.data) for d in self.valid)


def _documents(spec: DataSpec) -> Iterable[Document]:
    if spec.source == "python-stdlib":
        files, cap = select_stdlib(stdlib_files(), spec.max_bytes), None
    elif spec.source == "files":
        files, cap = expand_files(spec.files, "data.files"), spec.max_bytes
    else:
        raise ValueError(f"source {spec.source!r} has no documents to read here")
    for shard in plan_shards(files, DEFAULT_SHARD_BYTES, cap):
        for piece in shard.pieces:
            for name, data in iter_documents(piece, read_piece(piece), spec.jsonl_key):
                yield Document(name, data)


def load_corpus(spec: DataSpec) -> Corpus:
    """Read the spec's documents (capped at ``max_bytes``) and split train/validation."""
    docs = list(_documents(spec))
    if len(docs) < 2:
        raise DataError(
            "data",
            f"the corpus has {len(docs)} non-empty document(s); at least 2 are needed "
            "(one for training, one for validation)",
        )
    valid = [d for d in docs if unit(d.name, "valid") < spec.validation_fraction]
    if not valid:
        valid = [min(docs, key=lambda d: unit(d.name, "valid"))]
    valid_ids = {id(d) for d in valid}
    train = [d for d in docs if id(d) not in valid_ids]
    return Corpus(train=train, valid=valid)


def corpus_digest(corpus: Corpus) -> str:
    """A content hash of both splits."""
    h = hashlib.sha256()
    for split, docs in (("train", corpus.train), ("valid", corpus.valid)):
        h.update(split.encode())
        for doc in docs:
            h.update(doc.name.encode())
            h.update(len(doc.data).to_bytes(8, "little"))
            h.update(doc.data)
    return h.hexdigest()
