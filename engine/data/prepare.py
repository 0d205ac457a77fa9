"""Turn a spec's data section into megatron indexed datasets.

Everything goes through one road: the built-in corpus and text/JSONL files (many
files, tens of GB) are cut into shards, each shard tokenized once (in parallel as
Ray tasks when a Ray driver runs this) into partial datasets cached by the
shard's content, and the parts merged in order into the corpus's train/valid
megatron indexed datasets; a user's own indexed dataset is checked and used as
is.  File locks make concurrent preparation (two workers, two jobs) safe, and
everything is written under a temporary name and renamed, so a crash leaves
nothing a later run would take for finished.  The cache must be on storage every
node sees (ALTO_CACHE_DIR) for workers on other nodes to find the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from alto_client.spec import BYTE_VOCAB_SIZE, JobSpec

from engine.data.indexed import IndexWriter, check_indexed, token_dtype
from engine.data.roots import check_cache_outside_roots, resolve_in_roots
from engine.data.sources import (
    DEFAULT_SHARD_BYTES,
    Piece,
    Shard,
    SourceFile,
    expand_files,
    iter_documents,
    plan_shards,
    read_piece,
    select_stdlib,
    stdlib_files,
    unit,
)
from engine.data.tokenizer import BpeTokenizer, ByteTokenizer, Tokenizer, train_bpe
from engine.errors import DataError

FORMAT_VERSION = 2  # bump to invalidate caches when the on-disk layout changes
SPLITS = ("train", "valid")


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
    blend: list[dict] | None = None
    """Several datasets drawn from by weight: [{train_prefix, valid_prefix (None: split
    by ``split``), weight, num_train_tokens}]; None: the one dataset above."""
    num_valid_tokens: int | None = None
    cache_key: str | None = None

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


def prepare_data(spec: JobSpec, **options) -> PreparedData:
    """Check or build the job's indexed datasets; idempotent and cheap when cached.

    ``options`` go to :func:`prepare_corpora` (Ray use, workers, shard size)."""
    return prepare_data_with_stats(spec, **options)[0]


def prepare_data_with_stats(spec: JobSpec, **options) -> tuple[PreparedData, PrepStats]:
    """:func:`prepare_data` and what the preparation did (bytes, tasks, MB/s)."""
    d = spec.data
    if d.source == "indexed" or (d.source == "blend" and any(c.path for c in d.blend)):
        return _prepare_indexed(spec), PrepStats()
    return _prepare_corpus(spec, **options)


def _check_prefix(spec: JobSpec, path: str, field: str) -> tuple[str, int]:
    prefix = str(resolve_in_roots(indexed_prefix(path), field))
    info = check_indexed(prefix, field)
    vocab = spec.vocab_size
    if info.max_token_id >= vocab:
        raise DataError(
            "data.tokenizer.vocab_size",
            f"{prefix}.bin holds token id {info.max_token_id}, outside the vocabulary of "
            f"{vocab}; set data.tokenizer.vocab_size to at least {info.max_token_id + 1}",
        )
    return prefix, info.num_tokens


def _prepare_indexed(spec: JobSpec) -> PreparedData:
    d = spec.data
    if d.source == "indexed":
        assert d.path is not None
        named = [(d.path, "data.path", 1.0)]
    else:
        named = [(c.path, f"data.blend.{i}.path", c.weight) for i, c in enumerate(d.blend)]
    checked = [(*_check_prefix(spec, path, field), w) for path, field, w in named]  # type: ignore[arg-type]
    tok = d.tokenizer
    vocab = spec.vocab_size
    if tok.kind == "byte":
        eod = BYTE_VOCAB_SIZE - 1
    else:
        eod = tok.eod_id if tok.eod_id is not None else vocab - 1
    f = d.validation_fraction
    ident = ";".join(f"{Path(p).resolve()}:{n}:{w!r}" for p, n, w in checked)
    digest = hashlib.sha256(ident.encode()).hexdigest()
    blend = None
    if d.source == "blend":
        blend = [
            {"train_prefix": p, "valid_prefix": None, "weight": w,
             "num_train_tokens": int(n * (1 - f))}
            for p, n, w in checked
        ]  # fmt: skip
    return PreparedData(
        train_prefix=checked[0][0],
        valid_prefix=None,
        split=f"{100 * (1 - f):.6g},{100 * f:.6g},0",
        vocab_size=vocab,
        eod=eod,
        index_cache_dir=str(default_cache_dir() / "indices" / digest[:20]),
        num_train_tokens=sum(int(n * (1 - f)) for _, n, _ in checked),
        blend=blend,
    )


def indexed_prefix(path: str) -> str:
    """The dataset prefix of a `data.path` given with or without its .bin/.idx suffix."""
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


# ---------------------------------------------------------------- corpora: the road
#
# spec entries -> files -> shards (engine.data.sources) -> one task per shard, each
# writing its own partial train/valid indexed datasets into the cache, keyed by the
# shard's content -> the parts merged in shard order with megatron's
# IndexedDatasetBuilder.add_index.  Tasks run as Ray tasks (one CPU each) when this
# process is a Ray driver, else one after the other here: the output is the same
# bytes either way, since every part depends only on its shard and the merge order
# only on the shard order.

LOCAL_RAY_MIN_BYTES = 64 << 20
"""Below this many bytes to tokenize, starting a local Ray costs more than it saves."""
DEFAULT_BPE_SAMPLE_BYTES = 128 << 20
ENCODE_BATCH_BYTES = 4 << 20
"""Documents are tokenized in batches of about this many bytes (one ``tokenizers`` call)."""


@dataclass
class PrepStats:
    """What one preparation did: for the CLI, the bench and the job log."""

    bytes_total: int = 0
    bytes_read: int = 0
    """Bytes the tasks read (shards not known from the stat memo)."""
    bytes_tokenized: int = 0
    shards: int = 0
    shards_read: int = 0
    shards_tokenized: int = 0
    workers: int = 1
    mode: str = "cached"  # cached | in-process | ray
    wall_s: float = 0.0
    bpe_s: float = 0.0
    ray_start_s: float = 0.0
    """Time spent connecting to or starting Ray (not counted in ``mb_s``)."""
    tasks_s: float = 0.0
    """Wall time of the shard tasks (reading, hashing, tokenizing, writing parts)."""
    merge_s: float = 0.0
    """Wall time of merging the parts (one process: copying the parts' tokens)."""
    train_tokens: int = 0
    valid_tokens: int = 0
    cache_keys: list[str] | None = None

    def finish(self, corpora: list[dict], t0: float) -> PrepStats:
        """Fill in the prepared corpora's token counts and keys and the wall time since
        ``t0``; returns self."""
        self.train_tokens = sum(c["train_tokens"] for c in corpora)
        self.valid_tokens = sum(c["valid_tokens"] for c in corpora)
        self.cache_keys = [c["key"] for c in corpora]
        self.wall_s = time.perf_counter() - t0
        return self

    @property
    def mb_s(self) -> float:
        """Bytes the tasks read (and tokenized, unless cached) per second of the whole
        preparation (planning, BPE training and merge included)."""
        wall = self.wall_s - self.ray_start_s
        return self.bytes_read / 1e6 / wall if wall > 0 else 0.0

    @property
    def tasks_mb_s(self) -> float:
        """Bytes per second of the shard tasks alone (no planning, BPE or merge)."""
        return self.bytes_read / 1e6 / self.tasks_s if self.tasks_s > 0 else 0.0


@dataclass(frozen=True)
class TokenizerRef:
    """A tokenizer as plain data, so a Ray task on any node can rebuild it."""

    kind: str  # byte | bpe
    vocab_size: int
    json: str | None = None
    path: str | None = None

    @property
    def ident(self) -> str:
        if self.kind == "byte":
            return "byte"
        assert self.json is not None
        return f"bpe:{self.vocab_size}:{hashlib.sha256(self.json.encode()).hexdigest()}"

    def build(self) -> Tokenizer:
        if self.kind == "byte":
            return ByteTokenizer()
        assert self.json is not None
        return BpeTokenizer.from_json(self.json, self.vocab_size)


@dataclass(frozen=True)
class ShardTask:
    shard: Shard
    jsonl_key: str
    validation_fraction: float
    cache_root: str
    marker: str
    """A file the driver wrote in the cache: a task that cannot see it runs on a node
    without the shared cache and sends its part back instead of writing it."""


def _datasets_root() -> Path:
    return default_cache_dir() / "datasets"


def content_digest(shard: Shard, datas: list[bytes]) -> str:
    """sha256 of a shard's bytes and of the names its documents get."""
    h = hashlib.sha256()
    for piece, data in zip(shard.pieces, datas, strict=True):
        h.update(f"{piece.file.name}\0{piece.file.kind}\0{piece.start}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def part_key(digest: str, tokenizer_ident: str, jsonl_key: str, fraction: float) -> str:
    text = f"v{FORMAT_VERSION}:{tokenizer_ident}:{jsonl_key!r}:{fraction!r}:{digest}"
    return hashlib.sha256(text.encode()).hexdigest()


def _publish(final: Path, meta: str, build: Callable[[Path], None]) -> tuple[dict, bool]:
    """The JSON ``final/meta`` and whether this call built it: when it is missing,
    ``build`` fills a temporary sibling directory (``meta`` included) under a file lock,
    which is then renamed into place, so a reader sees all of it or nothing and a
    crash leaves no half entry that a later run would take for a cached one."""
    path = final / meta
    with _locked(final.with_suffix(".lock")):
        if path.is_file():
            return json.loads(path.read_text()), False
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        os.replace(tmp, final)
        return json.loads(path.read_text()), True


def _part_dir(cache_root: Path, key: str) -> Path:
    return cache_root / "parts" / key[:2] / key


def _write_part(task: ShardTask, tok: Tokenizer, datas: list[bytes], out: Path) -> dict:
    """Tokenize the shard's documents into ``out``/{train,valid}.{bin,idx} + part.json."""
    vocab = tok.vocab_size
    dtype = token_dtype(vocab)
    out.mkdir(parents=True, exist_ok=True)
    builders = {s: IndexWriter(out / s, dtype) for s in SPLITS}
    docs = {s: 0 for s in SPLITS}
    tokens = {s: 0 for s in SPLITS}
    lowest: tuple[float, int] | None = None  # (unit, index in train) of the first doc to hold out
    eod = tok.eod
    batch: list[bytes] = []
    where: list[tuple[float, str]] = []  # (unit, split) of each document in the batch
    batch_bytes = 0

    def flush() -> None:
        nonlocal lowest, batch_bytes
        for (u, split), ids in zip(where, tok.encode_batch(batch), strict=True):
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[:-1] = ids
            arr[-1] = eod
            builders[split].add(arr)
            if split == "train" and (lowest is None or u < lowest[0]):
                lowest = (u, docs["train"])
            docs[split] += 1
            tokens[split] += len(arr)
        batch.clear()
        where.clear()
        batch_bytes = 0

    for piece, data in zip(task.shard.pieces, datas, strict=True):
        for name, doc in iter_documents(piece, data, task.jsonl_key):
            u = unit(name, "valid")
            batch.append(doc)
            where.append((u, "valid" if u < task.validation_fraction else "train"))
            batch_bytes += len(doc)
            if batch_bytes >= ENCODE_BATCH_BYTES:
                flush()
    flush()
    for s in SPLITS:
        builders[s].finalize()
        if not docs[s]:
            (out / f"{s}.bin").unlink()
            (out / f"{s}.idx").unlink()
    info = {"docs": docs, "tokens": tokens, "lowest": lowest, "dtype": np.dtype(dtype).name}
    (out / "part.json").write_text(json.dumps(info))
    return info


@contextmanager
def _one_core():
    """Keep ``tokenizers`` on the calling thread (a task is granted one CPU): its
    ``encode_batch`` otherwise runs on a rayon pool of one thread per core of the node.
    ``TOKENIZERS_PARALLELISM`` is read at each call (``RAYON_NUM_THREADS`` only when the
    pool is first built, and it still leaves a pool thread beside the caller)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def run_shard(task: ShardTask, ref: TokenizerRef) -> dict:
    """One shard: read (hashing), then reuse its cached part or tokenize and store it.

    Runs as a Ray task or in-process; user errors come back as values (DataError holds
    more than its args, so it does not survive pickling)."""
    start = time.perf_counter()
    try:
        datas = [read_piece(p) for p in task.shard.pieces]
        digest = content_digest(task.shard, datas)
        key = part_key(digest, ref.ident, task.jsonl_key, task.validation_fraction)
        result = {"key": key, "digest": digest, "bytes": sum(map(len, datas))}
        root = Path(task.cache_root)
        if os.path.exists(task.marker):

            def tokenize(tmp: Path) -> None:
                with _one_core():
                    _write_part(task, ref.build(), datas, tmp)

            info, built = _publish(_part_dir(root, key), "part.json", tokenize)
            if not built:
                return {**result, **info, "cached": True}
            return {**result, **info, "cached": False, "s": time.perf_counter() - start}
        with tempfile.TemporaryDirectory(prefix="alto-part-") as tmp:
            with _one_core():
                info = _write_part(task, ref.build(), datas, Path(tmp))
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
        return {**result, **info, "cached": False, "files": files,
                "s": time.perf_counter() - start}  # fmt: skip
    except DataError as exc:
        return {"error": [exc.problems[0].field, exc.problems[0].message]}


def _install_part(root: Path, result: dict) -> None:
    """A part sent back by a task that could not see the cache: write it here."""
    files = result.pop("files")

    def write(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    _publish(_part_dir(root, result["key"]), "part.json", write)


def ray_driver() -> bool:
    """True when this process is a Ray driver (not a task or a Ray Train worker)."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    from ray._private.worker import SCRIPT_MODE

    return ray.get_runtime_context().worker.mode == SCRIPT_MODE


def _run_tasks(
    tasks: list[ShardTask],
    ref: TokenizerRef,
    use_ray: bool,
    workers: int,
    progress: Callable[[int, int, dict], None] | None,
) -> list[dict]:
    """Every task's result, in task order: Ray tasks (at most ``workers`` at once) or here."""
    results: list[dict | None] = [None] * len(tasks)

    def done(i: int, result: dict) -> None:
        if "error" in result:
            raise DataError(*result["error"])
        results[i] = result
        if progress is not None:
            progress(sum(r is not None for r in results), len(tasks), result)

    if not use_ray:
        for i, task in enumerate(tasks):
            done(i, run_shard(task, ref))
        return results  # type: ignore[return-value]
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(run_shard)
    ref_id = ray.put(ref)
    pending: dict = {}
    queue = list(enumerate(tasks))
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                i, task = queue.pop(0)
                pending[remote.remote(task, ref_id)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for obj in ready:
                done(pending.pop(obj), ray.get(obj))
    finally:
        for obj in pending:
            ray.cancel(obj)
    return results  # type: ignore[return-value]


def _memo_get(root: Path, key: str) -> str | None:
    path = root / "memo" / key[:2] / key
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _memo_put(root: Path, key: str, value: str) -> None:
    path = root / "memo" / key[:2] / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(value)
    tmp.replace(path)


@dataclass(frozen=True)
class CorpusRequest:
    """Everything that decides a prepared corpus (components: one per blend entry)."""

    components: list[list[SourceFile]]
    max_bytes: int | None  # applied per component, after expansion (files only)
    jsonl_key: str
    validation_fraction: float
    tokenizer_kind: str
    vocab_size: int
    sample_bytes: int


def corpus_request(spec: JobSpec) -> CorpusRequest:
    """The spec's corpora as files found now (DataError naming the field when not)."""
    d = spec.data
    max_bytes = d.max_bytes
    if d.source == "python-stdlib":
        components = [select_stdlib(stdlib_files(), d.max_bytes)]
        max_bytes = None
    elif d.source == "files":
        components = [expand_files(d.files, "data.files")]
    elif d.source == "blend":
        components = [expand_files(c.files, f"data.blend.{i}.files") for i, c in enumerate(d.blend)]
    else:
        raise ValueError(f"source {d.source!r} is pre-tokenized")
    tok = d.tokenizer
    return CorpusRequest(
        components=components,
        max_bytes=max_bytes,
        jsonl_key=d.jsonl_key,
        validation_fraction=d.validation_fraction,
        tokenizer_kind=tok.kind,
        vocab_size=spec.vocab_size,
        sample_bytes=tok.sample_bytes or DEFAULT_BPE_SAMPLE_BYTES,
    )


def _bpe_sample(
    shards: list[Shard], sample_bytes: int, jsonl_key: str, fraction: float
) -> tuple[list[bytes], str]:
    """A deterministic sample of the training split, spread over every piece in
    proportion to its size (each piece's first lines), and its digest."""
    total = sum(s.num_bytes for s in shards) or 1
    texts: list[bytes] = []
    h = hashlib.sha256(f"{sample_bytes}".encode())
    for shard in shards:
        for piece in shard.pieces:
            quota = max(1, piece.num_bytes * sample_bytes // total)
            if piece.file.kind == "txt" and quota < piece.num_bytes:
                # whole small files, a spread of them: the file's own hash decides
                if unit(piece.file.name, "bpe") >= quota / piece.num_bytes:
                    continue
                quota = piece.num_bytes
            data = read_piece(piece, limit=quota)
            for name, doc in iter_documents(
                Piece(piece.file, piece.start, piece.start + len(data)), data, jsonl_key
            ):
                if unit(name, "valid") >= fraction:
                    texts.append(doc)
                    h.update(name.encode("utf-8", "surrogateescape") + b"\0")
                    h.update(doc)
    return texts, h.hexdigest()


def _tokenizer_for(req: CorpusRequest, shards: list[Shard], root: Path) -> TokenizerRef:
    if req.tokenizer_kind == "byte":
        return TokenizerRef("byte", BYTE_VOCAB_SIZE)
    texts, digest = _bpe_sample(shards, req.sample_bytes, req.jsonl_key, req.validation_fraction)
    if not texts:
        raise DataError("data", "the corpus has no training text to train the BPE tokenizer on")
    key = hashlib.sha256(f"v{FORMAT_VERSION}:bpe:{req.vocab_size}:{digest}".encode()).hexdigest()
    path = root / "bpe" / f"{key[:24]}.json"
    with _locked(path.with_suffix(".lock")):
        if not path.is_file():
            train_bpe(texts, req.vocab_size, path)
    return TokenizerRef("bpe", req.vocab_size, json=path.read_text(), path=str(path))


def _merge(parts: list[dict], root: Path, ref: TokenizerRef, field: str) -> dict:
    """The corpus dataset of these parts (in order), cached under their keys' hash."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    total = sum(p["docs"]["train"] + p["docs"]["valid"] for p in parts)
    if total < 2:
        raise DataError(
            field,
            f"the corpus has {total} non-empty document(s); at least 2 are needed "
            "(one for training, one for validation)",
        )
    drop = None  # no document fell into validation: hold out the one nearest to it
    if not sum(p["docs"]["valid"] for p in parts):
        candidates = [
            (p["lowest"][0], i, p["lowest"][1]) for i, p in enumerate(parts) if p["lowest"]
        ]
        _, part_index, doc_index = min(candidates)
        drop = (part_index, doc_index)
    if sum(p["docs"]["train"] for p in parts) - (drop is not None) < 1:
        raise DataError(
            "data.validation_fraction",
            "every document fell into the validation split; lower validation_fraction "
            "or add documents",
        )
    keys = [p["key"] for p in parts]
    key = hashlib.sha256(f"v{FORMAT_VERSION}:{ref.ident}:{','.join(keys)}".encode()).hexdigest()
    final = root / "corpora" / key[:24]

    def build(tmp: Path) -> None:
        dtype = token_dtype(ref.vocab_size)
        tokens = {}
        for split in SPLITS:
            builder = IndexedDatasetBuilder(str(tmp / f"{split}.bin"), dtype=dtype)
            count = 0
            for i, p in enumerate(parts):
                prefix = str(_part_dir(root, p["key"]) / split)
                if drop is not None and drop[0] == i and split == "train":
                    ds = IndexedDataset(prefix, mmap=True)
                    for j in range(len(ds)):
                        if j != drop[1]:
                            builder.add_document(ds[j], [len(ds[j])])
                            count += len(ds[j])
                    continue
                if p["docs"][split]:
                    _add_index(builder, prefix)
                    count += p["tokens"][split]
            if split == "valid" and drop is not None:
                ds = IndexedDataset(
                    str(_part_dir(root, parts[drop[0]]["key"]) / "train"), mmap=True
                )
                builder.add_document(ds[drop[1]], [len(ds[drop[1]])])
                count += len(ds[drop[1]])
            builder.finalize(str(tmp / f"{split}.idx"))
            tokens[split] = count
        info = {
            "key": key[:24],
            "train_prefix": str(final / "train"),
            "valid_prefix": str(final / "valid"),
            "index_cache_dir": str(final / "indices"),
            "train_tokens": tokens["train"],
            "valid_tokens": tokens["valid"],
            "tokenizer_path": ref.path,
            "eod": ref.build().eod,
        }
        (tmp / "corpus.json").write_text(json.dumps(info))

    return _publish(final, "corpus.json", build)[0]


def _import_builder() -> None:
    # the merge imports it again and reports any error
    with contextlib.suppress(Exception):
        import megatron.core.datasets.indexed_dataset  # noqa: F401


def _add_index(builder, prefix: str) -> None:
    """megatron's ``IndexedDatasetBuilder.add_index`` (same bytes) without its
    ``gc.collect()`` per call, which costs a third of a second once torch is imported:
    minutes for a corpus of hundreds of parts."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    index = _IndexReader(f"{prefix}.idx", multimodal=False)
    assert index.dtype == builder.dtype, (index.dtype, builder.dtype)
    offset = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(index.sequence_lengths)
    builder.document_indices.extend((offset + index.document_indices)[1:])
    del index
    with open(f"{prefix}.bin", "rb") as stream:
        shutil.copyfileobj(stream, builder.data_file, 16 << 20)


def _lookup_key(req: CorpusRequest, plans: list[list[Shard]]) -> str:
    h = hashlib.sha256(
        f"v{FORMAT_VERSION}:{req.tokenizer_kind}:{req.vocab_size}:{req.sample_bytes}:"
        f"{req.jsonl_key!r}:{req.validation_fraction!r}".encode()
    )
    for shards in plans:
        h.update(b"[")
        for shard in shards:
            h.update(shard.stat_key().encode())
    return h.hexdigest()


def prepare_corpora(
    req: CorpusRequest,
    *,
    use_ray: bool | None = None,
    start_ray: Callable[[], None] | None = None,
    workers: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int, int, dict], None] | None = None,
    ray_min_bytes: int = LOCAL_RAY_MIN_BYTES,
) -> tuple[list[dict], PrepStats]:
    """Prepared train/valid datasets of each component, and what it took.

    ``use_ray`` None: Ray tasks when this process is a Ray driver; ``start_ray`` is
    called first (to connect or start one, as a launch does) when there is enough
    to tokenize to pay for it.  ``workers`` bounds the parallel tasks (default: the
    cluster's CPUs); ``ray_min_bytes``: the least to tokenize that starts a local Ray.
    A corpus prepared before (same files, same size, mtime and
    inode; else the same content) comes back without tokenizing anything.
    """
    t0 = time.perf_counter()
    root = _datasets_root()
    plans = [plan_shards(files, shard_bytes, req.max_bytes) for files in req.components]
    stats = PrepStats(
        bytes_total=sum(s.num_bytes for shards in plans for s in shards),
        shards=sum(len(shards) for shards in plans),
    )
    for i, shards in enumerate(plans):
        if not shards:
            field = "data.files" if len(plans) == 1 else f"data.blend.{i}.files"
            raise DataError(field, "the corpus is empty (no bytes to read)")
    lookup = _lookup_key(req, plans)
    known = _memo_get(root, "corpus-" + lookup)
    if known:
        infos = [json.loads(Path(p).read_text()) for p in json.loads(known) if Path(p).is_file()]
        if len(infos) == len(plans):
            return infos, stats.finish(infos, t0)
    bpe_t = time.perf_counter()
    ref = _tokenizer_for(req, [s for shards in plans for s in shards], root)
    stats.bpe_s = time.perf_counter() - bpe_t if ref.kind == "bpe" else 0.0
    marker = root / f".driver-{os.getpid()}-{time.time_ns()}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        flat = [s for shards in plans for s in shards]
        parts: list[dict | None] = [None] * len(flat)
        todo = []
        for i, shard in enumerate(flat):
            digest = _memo_get(root, shard.stat_key())
            if digest:
                key = part_key(digest, ref.ident, req.jsonl_key, req.validation_fraction)
                meta = _part_dir(root, key) / "part.json"
                if meta.is_file():
                    parts[i] = {"key": key, **json.loads(meta.read_text()), "cached": True}
                    continue
            todo.append(i)
        stats.shards_read = len(todo)
        stats.bytes_read = sum(flat[i].num_bytes for i in todo)
        if use_ray is None:
            if (
                todo
                and not ray_driver()
                and start_ray is not None
                and (os.environ.get("RAY_ADDRESS") or stats.bytes_read >= ray_min_bytes)
            ):
                t_ray = time.perf_counter()
                start_ray()
                stats.ray_start_s = time.perf_counter() - t_ray
            use_ray = ray_driver() and len(todo) > 1
        if use_ray and todo:
            import ray

            cpus = int(ray.cluster_resources().get("CPU", 1))
            stats.workers = max(1, min(workers or cpus, len(todo)))
            stats.mode = "ray"
        elif todo:
            stats.mode = "in-process"
        tasks = [
            ShardTask(flat[i], req.jsonl_key, req.validation_fraction, str(root), str(marker))
            for i in todo
        ]
        t_tasks = time.perf_counter()
        if use_ray:  # the merge needs megatron (and torch): import them while tasks run
            threading.Thread(target=_import_builder, name="alto-import-megatron").start()
        results = _run_tasks(tasks, ref, bool(use_ray), stats.workers, progress)
        stats.tasks_s = time.perf_counter() - t_tasks
        for i, result in zip(todo, results, strict=True):
            if "files" in result:
                _install_part(root, result)
            _memo_put(root, flat[i].stat_key(), result["digest"])
            if not result.get("cached"):
                stats.shards_tokenized += 1
                stats.bytes_tokenized += result["bytes"]
            parts[i] = result
    finally:
        marker.unlink(missing_ok=True)
    t_merge = time.perf_counter()
    infos, at = [], 0
    for c, shards in enumerate(plans):
        field = "data" if len(plans) == 1 else f"data.blend.{c}"
        infos.append(_merge(parts[at : at + len(shards)], root, ref, field))  # type: ignore[arg-type]
        at += len(shards)
    stats.merge_s = time.perf_counter() - t_merge
    metas = [str(Path(i["train_prefix"]).parent / "corpus.json") for i in infos]
    _memo_put(root, "corpus-" + lookup, json.dumps(metas))
    return infos, stats.finish(infos, t0)


def _prepare_corpus(spec: JobSpec, **options) -> tuple[PreparedData, PrepStats]:
    infos, stats = prepare_corpora(corpus_request(spec), **options)
    first = infos[0]
    blend = None
    index_cache_dir = first["index_cache_dir"]
    if spec.data.source == "blend":
        weights = [c.weight for c in spec.data.blend]
        blend = [
            {
                "train_prefix": i["train_prefix"],
                "valid_prefix": i["valid_prefix"],
                "weight": w,
                "num_train_tokens": i["train_tokens"],
            }
            for i, w in zip(infos, weights, strict=True)
        ]
        key = hashlib.sha256(json.dumps(blend, sort_keys=True).encode()).hexdigest()[:24]
        index_cache_dir = str(_datasets_root() / "blends" / key / "indices")
    prepared = PreparedData(
        train_prefix=first["train_prefix"],
        valid_prefix=first["valid_prefix"],
        split=None,
        vocab_size=spec.vocab_size,
        eod=first["eod"],
        index_cache_dir=index_cache_dir,
        num_train_tokens=stats.train_tokens,
        tokenizer_path=first["tokenizer_path"],
        blend=blend,
        num_valid_tokens=stats.valid_tokens,
        cache_key=",".join(stats.cache_keys or []),
    )
    return prepared, stats


def load_tokenizer(prepared: PreparedData) -> Tokenizer | None:
    """The tokenizer that made ``prepared`` (None for pre-tokenized external data)."""
    if prepared.tokenizer_path:
        return BpeTokenizer(Path(prepared.tokenizer_path), prepared.vocab_size)
    if prepared.vocab_size == BYTE_VOCAB_SIZE and prepared.eod == BYTE_VOCAB_SIZE - 1:
        return ByteTokenizer()
    return None
