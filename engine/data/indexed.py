"""Megatron indexed datasets (.bin/.idx): write ours, and check anyone's before megatron reads it.

megatron's reader trusts the index: a truncated or corrupt ``.idx`` ends in an
assert, a numpy buffer error or silent garbage deep inside a worker.  We read the
header and the three index arrays ourselves first and say exactly what is wrong
with which file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron's DType codes (indexed_dataset.DType)
_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8
_MAX_SCAN_BYTES = 1 << 30  # check every token id of files up to 1 GiB, sample beyond


@dataclass(frozen=True)
class IndexInfo:
    """What the index says: token dtype, sequences, documents, tokens, largest id seen."""

    dtype: np.dtype
    num_sequences: int
    num_documents: int
    num_tokens: int
    max_token_id: int


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 while ids fit (halves disk and page-cache use), else int32."""
    return np.uint16 if vocab_size <= 65535 else np.int32


class IndexWriter:
    """Writes one-sequence-per-document indexed datasets in megatron's layout (the bytes
    megatron's IndexedDatasetBuilder writes; a test holds them equal) without importing
    megatron or torch: a preparation task then starts in about a second, not ten."""

    def __init__(self, prefix: Path, dtype: type[np.number]) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._code = next(c for c, t in _DTYPES.items() if np.dtype(t) == self.dtype)
        self._bin = open(f"{prefix}.bin", "wb")  # noqa: SIM115 - closed by finalize
        self.lengths: list[int] = []

    def add(self, tokens: np.ndarray) -> None:
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.lengths.append(len(tokens))

    def finalize(self) -> None:
        self._bin.close()
        n = len(self.lengths)
        lengths = np.asarray(self.lengths, dtype=np.int32)
        pointers = np.zeros(n, dtype=np.int64)
        if n:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(f"{self.prefix}.idx", "wb") as idx:
            idx.write(INDEX_HEADER)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", self._code))
            idx.write(struct.pack("<Q", n))
            idx.write(struct.pack("<Q", n + 1))
            idx.write(lengths.tobytes())
            idx.write(pointers.tobytes())
            idx.write(np.arange(n + 1, dtype=np.int64).tobytes())


def write_indexed(prefix: Path, documents: list[np.ndarray], vocab_size: int) -> None:
    """Write one sequence per document with megatron's own IndexedDatasetBuilder.

    Written under a temporary name and renamed, so a crash never leaves a half dataset
    that a later run would mistake for a cached one.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = token_dtype(vocab_size)
    tmp_bin, tmp_idx = f"{prefix}.tmp.bin", f"{prefix}.tmp.idx"
    builder = IndexedDatasetBuilder(tmp_bin, dtype=dtype)
    for doc in documents:
        builder.add_document(np.asarray(doc, dtype=dtype), [len(doc)])
    builder.finalize(tmp_idx)
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")


def check_indexed(prefix: str, field: str = "data.path") -> IndexInfo:
    """Validate ``prefix.idx`` against itself and ``prefix.bin``; raise DataError on any flaw."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for path in (idx, bin_):
        if not path.is_file():
            raise DataError(
                field, f"{path} does not exist (an indexed dataset needs .bin and .idx)"
            )
    size = idx.stat().st_size
    raw = idx.read_bytes()

    def bad(why: str) -> DataError:
        return DataError(field, f"{idx} is not a valid megatron index: {why}")

    if len(raw) < _HEADER_BYTES:
        raise bad(f"only {size} bytes, shorter than the {_HEADER_BYTES}-byte header")
    if raw[:9] != INDEX_HEADER:
        raise bad(f"bad magic {raw[:9]!r}, expected {INDEX_HEADER!r}")
    (version,) = struct.unpack_from("<Q", raw, 9)
    if version != INDEX_VERSION:
        raise bad(f"version {version}, only version {INDEX_VERSION} is supported")
    (code,) = struct.unpack_from("<B", raw, 17)
    if code not in _DTYPES:
        raise bad(f"unknown token dtype code {code} (known: {sorted(_DTYPES)})")
    dtype = np.dtype(_DTYPES[code])
    (n_seq,) = struct.unpack_from("<Q", raw, 18)
    (n_doc,) = struct.unpack_from("<Q", raw, 26)
    expected = _HEADER_BYTES + n_seq * 4 + n_seq * 8 + n_doc * 8
    if size not in (expected, expected + n_seq):  # + n_seq: multimodal modes
        raise bad(
            f"{size} bytes, but its header ({n_seq} sequences, {n_doc} documents) "
            f"implies {expected}: truncated or corrupt"
        )
    if n_seq == 0:
        raise bad("it holds no sequences")
    off = _HEADER_BYTES
    lengths = np.frombuffer(raw, dtype=np.int32, count=n_seq, offset=off)
    pointers = np.frombuffer(raw, dtype=np.int64, count=n_seq, offset=off + 4 * n_seq)
    docs = np.frombuffer(raw, dtype=np.int64, count=n_doc, offset=off + 12 * n_seq)
    if (lengths < 0).any():
        raise bad("negative sequence lengths")
    starts = np.concatenate(([0], np.cumsum(lengths[:-1].astype(np.int64)) * dtype.itemsize))
    if not np.array_equal(starts, pointers):
        raise bad("sequence pointers do not match the sequence lengths")
    if n_doc < 2 or docs[0] != 0 or docs[-1] != n_seq or (np.diff(docs) < 0).any():
        raise bad("document indices must rise from 0 to the number of sequences")
    num_tokens = int(lengths.astype(np.int64).sum())
    bin_size = bin_.stat().st_size
    if bin_size != num_tokens * dtype.itemsize:
        raise DataError(
            field,
            f"{bin_} holds {bin_size} bytes but {idx} describes {num_tokens} tokens of "
            f"{dtype.name} ({num_tokens * dtype.itemsize} bytes): the pair does not match",
        )
    tokens = np.memmap(bin_, dtype=dtype, mode="r")
    if bin_size <= _MAX_SCAN_BYTES:
        max_id = int(tokens.max())
        min_id = int(tokens.min())
    else:  # sample 64 evenly spaced 1M-token windows
        step = max(1, len(tokens) // 64)
        windows = [tokens[i : i + (1 << 20)] for i in range(0, len(tokens), step)]
        max_id = max(int(w.max()) for w in windows)
        min_id = min(int(w.min()) for w in windows)
    del tokens
    if min_id < 0:
        raise DataError(field, f"{bin_} holds negative token id {min_id}")
    return IndexInfo(dtype, n_seq, n_doc, num_tokens, max_id)
