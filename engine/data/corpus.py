"""Documents for the built-in corpus and for text/JSONL files, split deterministically.

Splitting is by document *name* hash, never by position or by machine order, so
the same corpus gives the same train/validation split on every machine and in
every run; the stdlib corpus is split by file.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alto_client.spec import DataSpec

from engine.data.roots import resolve_in_roots
from engine.errors import DataError


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


def _unit(name: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the name: the basis of every split decision."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stdlib_root() -> Path:
    """Where this interpreter's standard library lives (the built-in corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_documents() -> Iterable[Document]:
    root = stdlib_root()
    if not root.is_dir():
        raise DataError(
            "data.source",
            f"the python-stdlib corpus needs the standard library at {root}, which is missing",
        )
    skip = {"site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # unreadable files are not part of the corpus on this machine
        if data.strip():
            yield Document(rel.as_posix(), data)


def _file_documents(spec: DataSpec) -> Iterable[Document]:
    for index, name in enumerate(spec.files):
        path = resolve_in_roots(name, f"data.files.{index}")
        if path.suffix == ".txt":
            yield Document(path.name + f"#{index}", path.read_bytes())
            continue
        with path.open("rb") as stream:
            for lineno, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"data.files.{index}",
                        f"{name}:{lineno} is not valid JSON ({exc.msg})",
                    ) from None
                text = record.get(spec.jsonl_key) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(
                        "data.jsonl_key",
                        f"{name}:{lineno} has no string field {spec.jsonl_key!r}",
                    )
                if text:
                    yield Document(f"{path.name}#{index}:{lineno}", text.encode("utf-8"))


def load_corpus(spec: DataSpec) -> Corpus:
    """Read the spec's documents, cap them at ``max_bytes`` and split train/validation."""
    if spec.source == "python-stdlib":
        docs = list(_stdlib_documents())
    elif spec.source == "files":
        docs = list(_file_documents(spec))
    else:
        raise ValueError(f"source {spec.source!r} has no documents to read; it is pre-tokenized")
    if spec.max_bytes is not None:
        # documents in a fixed pseudo-random order, each taken if it still fits
        chosen, total = [], 0
        for doc in sorted(docs, key=lambda d: _unit(d.name, "take")):
            if total + len(doc.data) <= spec.max_bytes:
                chosen.append(doc)
                total += len(doc.data)
        docs = sorted(chosen, key=lambda d: d.name)
    if len(docs) < 2:
        raise DataError(
            "data",
            f"the corpus has {len(docs)} non-empty document(s); at least 2 are needed "
            "(one for training, one for validation)",
        )
    valid = [d for d in docs if _unit(d.name, "valid") < spec.validation_fraction]
    if not valid:
        valid = [min(docs, key=lambda d: _unit(d.name, "valid"))]
    valid_names = {d.name for d in valid}
    train = [d for d in docs if d.name not in valid_names]
    return Corpus(train=train, valid=valid)


def corpus_digest(corpus: Corpus) -> str:
    """A content hash of both splits: the cache key of everything derived from the corpus."""
    h = hashlib.sha256()
    for split, docs in (("train", corpus.train), ("valid", corpus.valid)):
        h.update(split.encode())
        for doc in docs:
            h.update(doc.name.encode())
            h.update(len(doc.data).to_bytes(8, "little"))
            h.update(doc.data)
    return h.hexdigest()
