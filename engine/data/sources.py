"""Where a corpus's bytes are: spec entries expanded to files, files cut into shards.

A shard is the unit of parallel preparation: a list of pieces, each a whole .txt
file (one document) or a byte range of a JSONL file cut at line boundaries (one
document per line).  Small files are grouped into one shard, large JSONL files
are cut into several.  A document's *name* (the basis of the held-out split) is
its file's name for a .txt file and ``file@byte-offset-of-its-line`` for a JSONL
line: it depends on the file and the document's place in it, never on how the
file was cut, how many workers ran or on which machine.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.data.roots import resolve_in_roots
from engine.errors import DataError

CORPUS_SUFFIXES = (".txt", ".jsonl", ".json")
DEFAULT_SHARD_BYTES = 64 << 20
_WILDCARDS = ("*", "?", "[")


@dataclass(frozen=True)
class SourceFile:
    """One file of a corpus, as found now: what to read and how its documents are named."""

    path: str
    name: str
    """Document-name stem: the file name (user corpora), the relative path (stdlib)."""
    kind: str  # "txt" | "jsonl"
    field: str
    """The spec field that named the file (for errors)."""
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Piece:
    """A line-aligned byte range of one file (a .txt file is always whole)."""

    file: SourceFile
    start: int
    end: int

    @property
    def num_bytes(self) -> int:
        return self.end - self.start

    def stat_key(self) -> str:
        """Identity of the bytes as the filesystem describes them (the memo's key)."""
        f = self.file
        return f"{f.path}\0{f.size}\0{f.mtime_ns}\0{f.inode}\0{self.start}\0{self.end}"


@dataclass(frozen=True)
class Shard:
    pieces: tuple[Piece, ...]

    @property
    def num_bytes(self) -> int:
        return sum(p.num_bytes for p in self.pieces)

    def stat_key(self) -> str:
        h = hashlib.sha256()
        for p in self.pieces:
            h.update(p.stat_key().encode("utf-8", "surrogateescape"))
            h.update(b"\n")
        return h.hexdigest()


def _kind(path: str) -> str:
    return "txt" if path.endswith(".txt") else "jsonl"


def _source_file(path: str, name: str, field: str) -> SourceFile:
    st = os.stat(path)
    return SourceFile(path, name, _kind(path), field, st.st_size, st.st_mtime_ns, st.st_ino)


def _is_glob(entry: str) -> bool:
    return any(w in entry for w in _WILDCARDS)


def expand_entry(entry: str, field: str) -> list[str]:
    """The files one ``data.files`` entry names (sorted), each resolved inside the roots.

    A directory (written with a trailing '/') gives every .txt/.jsonl file below it, a
    glob every such file it matches (``**`` crosses directories); the error for an
    entry that names nothing says which field and value, and what is allowed.
    """
    if entry.endswith("/") or _is_glob(entry):
        parts = Path(entry).parts
        fixed = next((i for i, part in enumerate(parts) if _is_glob(part)), len(parts))
        try:
            base = resolve_in_roots(str(Path(*parts[:fixed])), field)
        except DataError as exc:
            raise DataError(field, f"{entry!r}: {exc.problems[0].message}") from None
        pattern = str(base.joinpath(*parts[fixed:], *(("**", "*") if entry.endswith("/") else ())))
        matches = sorted(
            m
            for m in glob.glob(pattern, recursive=True)
            if m.endswith(CORPUS_SUFFIXES) and os.path.isfile(m)
        )
        if not matches:
            raise DataError(
                field,
                f"{entry!r} matches no .txt or .jsonl file (a directory is read recursively, "
                "a glob may use * ? [..] and **)",
            )
        return [str(resolve_in_roots(m, field)) for m in matches]
    path = resolve_in_roots(entry, field)
    if not path.is_file():
        raise DataError(field, f"{entry!r} does not exist")
    return [str(path)]


def expand_files(entries: list[str], field: str) -> list[SourceFile]:
    """Every file the entries name, in entry order (each entry's matches sorted)."""
    out = []
    for i, entry in enumerate(entries):
        for path in expand_entry(entry, f"{field}.{i}"):
            out.append(_source_file(path, os.path.basename(path), f"{field}.{i}"))
    return out


def stdlib_root() -> Path:
    """Where this interpreter's standard library lives (the built-in corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[SourceFile]:
    root = stdlib_root()
    if not root.is_dir():
        raise DataError(
            "data.source",
            f"the python-stdlib corpus needs the standard library at {root}, which is missing",
        )
    skip = {"site-packages", "dist-packages", "__pycache__"}
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts):
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # unreadable files are not part of the corpus on this machine
        if st.st_size and os.access(path, os.R_OK):
            out.append(
                SourceFile(
                    str(path), rel.as_posix(), "txt", "data.source", st.st_size,
                    st.st_mtime_ns, st.st_ino,
                )
            )  # fmt: skip
    return out


def unit(name: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the name: the basis of every split decision."""
    digest = hashlib.sha256(f"{salt}:{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _next_line_start(stream, pos: int, size: int) -> int:
    """The first line start at or after ``pos`` (``size`` if none)."""
    if pos <= 0:
        return 0
    stream.seek(pos - 1)
    while True:
        block = stream.read(1 << 16)
        if not block:
            return size
        at = block.find(b"\n")
        if at >= 0:
            return pos + at
        pos += len(block)


def _last_line_end(stream, start: int, limit: int) -> int:
    """The end of the last whole line in [start, limit) (``start`` if none)."""
    stream.seek(start)
    block = stream.read(limit - start)
    at = block.rfind(b"\n")
    return start if at < 0 else start + at + 1


def cut_file(file: SourceFile, shard_bytes: int) -> list[Piece]:
    """A JSONL file as line-aligned ranges of about ``shard_bytes`` (a .txt file whole)."""
    if file.kind == "txt" or file.size <= shard_bytes:
        return [Piece(file, 0, file.size)]
    pieces = []
    with open(file.path, "rb") as stream:
        start = 0
        while start < file.size:
            end = min(file.size, _next_line_start(stream, start + shard_bytes, file.size))
            pieces.append(Piece(file, start, end))
            start = end
    return pieces


def plan_shards(
    files: list[SourceFile], shard_bytes: int, max_bytes: int | None = None
) -> list[Shard]:
    """Pieces of every file in order, capped at ``max_bytes`` (the first bytes, cut at a
    line; a .txt file is taken whole if it still fits), grouped into shards."""
    pieces: list[Piece] = []
    budget = max_bytes
    for file in files:
        for piece in cut_file(file, shard_bytes):
            if budget is not None:
                if budget <= 0:
                    break
                if piece.num_bytes > budget:
                    if piece.file.kind == "txt":
                        continue
                    with open(piece.file.path, "rb") as stream:
                        end = _last_line_end(stream, piece.start, piece.start + budget)
                    if end > piece.start:
                        pieces.append(Piece(piece.file, piece.start, end))
                    budget = 0  # the cap cuts here: the first max_bytes bytes, no more
                    break
                budget -= piece.num_bytes
            if piece.num_bytes:
                pieces.append(piece)
    # a piece of a large file is a shard of its own; small files are grouped, a group
    # ending after a file whose name hash says so (a chance proportional to its size) or
    # at shard_bytes: adding or removing a file changes only its own group, so every
    # other shard (and its cached part) stays the same
    shards: list[Shard] = []
    group: list[Piece] = []
    size = 0
    for piece in pieces:
        alone = piece.file.size > shard_bytes
        if group and (alone or size + piece.num_bytes > shard_bytes):
            shards.append(Shard(tuple(group)))
            group, size = [], 0
        if alone:
            shards.append(Shard((piece,)))
            continue
        group.append(piece)
        size += piece.num_bytes
        if unit(piece.file.name, "group") < piece.num_bytes / shard_bytes:
            shards.append(Shard(tuple(group)))
            group, size = [], 0
    if group:
        shards.append(Shard(tuple(group)))
    return shards


def select_stdlib(files: list[SourceFile], max_bytes: int | None) -> list[SourceFile]:
    """The stdlib files under the cap: in a fixed pseudo-random order, each taken if it
    still fits, then back in name order (a spread sample, not the first modules)."""
    if max_bytes is None:
        return files
    chosen, total = [], 0
    for f in sorted(files, key=lambda f: unit(f.name, "take")):
        if total + f.size <= max_bytes:
            chosen.append(f)
            total += f.size
    return sorted(chosen, key=lambda f: f.name)


def line_number(path: str, offset: int) -> int:
    """The 1-based line number of the line starting at ``offset`` (only for messages)."""
    count = 0
    with open(path, "rb") as stream:
        remaining = offset
        while remaining > 0:
            block = stream.read(min(remaining, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


def iter_documents(piece: Piece, data: bytes, jsonl_key: str) -> Iterator[tuple[str, bytes]]:
    """(name, UTF-8 bytes) of each non-empty document of ``piece`` whose bytes are ``data``.

    Raises DataError naming the file's field and ``file:line`` for a bad JSONL line.
    """
    f = piece.file
    if f.kind == "txt":
        if data.strip():
            yield f.name, data
        return
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = data[pos:end]
        offset = piece.start + pos
        pos = end
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise DataError(
                f.field, f"{f.path}:{line_number(f.path, offset)} is not valid JSON ({why})"
            ) from None
        text = record.get(jsonl_key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                "data.jsonl_key",
                f"{f.path}:{line_number(f.path, offset)} has no string field {jsonl_key!r}",
            )
        if text:
            yield f"{f.name}@{offset}", text.encode("utf-8", "replace")


def read_piece(piece: Piece, limit: int | None = None) -> bytes:
    """The bytes of ``piece`` (its first ``limit`` bytes cut at a line, if given)."""
    with open(piece.file.path, "rb") as stream:
        stream.seek(piece.start)
        if limit is None or limit >= piece.num_bytes:
            data = stream.read(piece.num_bytes)
            if len(data) != piece.num_bytes:
                raise DataError(
                    piece.file.field,
                    f"{piece.file.path} changed while being read (expected {piece.num_bytes} "
                    f"bytes at offset {piece.start}, got {len(data)})",
                )
            return data
        data = stream.read(limit)
    if piece.file.kind == "txt":
        return data
    at = data.rfind(b"\n")
    return data[: at + 1] if at >= 0 else b""
