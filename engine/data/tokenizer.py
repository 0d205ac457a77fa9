"""Tokenizers: byte-level, a locally trained byte-level BPE (cached), or external ids.

No downloads: the BPE is trained with the ``tokenizers`` library on a bounded,
deterministic sample of the job's own training split and cached keyed by that
sample's hash and the vocabulary size, so a second run (or a second worker)
reuses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.data.corpus import Document

EOD_TOKEN = "<|endoftext|>"


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer: ids for bytes, the vocabulary, end-of-doc."""

    vocab_size: int
    eod: int

    def encode(self, data: bytes) -> np.ndarray: ...

    def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
        """``[encode(d) for d in datas]``, in fewer calls."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte; id 256 ends a document."""

    vocab_size = 257
    eod = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
        return [self.encode(d) for d in datas]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class BpeTokenizer:
    """A byte-level BPE from the ``tokenizers`` library, loaded from its JSON file."""

    def __init__(self, path: Path | None, vocab_size: int, *, text: str | None = None) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        if text is not None:
            self._tok = HfTokenizer.from_str(text)
        else:
            self._tok = HfTokenizer.from_file(str(path))
        eod = self._tok.token_to_id(EOD_TOKEN)
        if eod is None:
            raise ValueError(f"{path} has no {EOD_TOKEN} token; delete it to retrain")
        self.eod = eod
        self.vocab_size = vocab_size
        self.path = path

    @classmethod
    def from_json(cls, text: str, vocab_size: int) -> BpeTokenizer:
        """The tokenizer from its JSON text (what a Ray task on another node receives)."""
        return cls(None, vocab_size, text=text)

    def encode(self, data: bytes) -> np.ndarray:
        text = data.decode("utf-8", errors="replace")
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
        """The ids of each document, one ``tokenizers`` call for them all (the same ids
        :meth:`encode` gives one by one).  The Rust side spreads a batch over its own
        thread pool unless ``TOKENIZERS_PARALLELISM=false`` (read at each call): a
        shard task sets that, so one task stays on its one core."""
        texts = [d.decode("utf-8", errors="replace") for d in datas]
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def train_bpe(docs: Iterable[Document | bytes], vocab_size: int, path: Path) -> None:
    """Train a byte-level BPE with ``vocab_size`` ids (EOD included) and save it to ``path``."""
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HfTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (
        (d.data if isinstance(d, Document) else d).decode("utf-8", errors="replace") for d in docs
    )
    tok.train_from_iterator(texts, trainer)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
