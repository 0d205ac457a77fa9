"""megatron GPTDatasets for a prepared job, and the per-step micro batches of one rank.

The global batch of step s (1-based) is samples [(s-1)*G, s*G) of the train
dataset, which megatron has already shuffled with the job's seed; data-parallel
rank r takes its contiguous share.  The order is a pure function of (seed, step),
so a run resumed from a checkpoint at step k sees exactly the batches k+1, ...
an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from alto_client.spec import JobSpec

from engine.data.prepare import PreparedData

_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


class _Vocabulary:
    """The tokenizer facts GPTDatasetConfig needs (megatron's MegatronTokenizerBase duck type)."""

    def __init__(self, vocab_size: int, eod: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = {"class": "alto-vocabulary", "vocab_size": vocab_size, "eod": eod}


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset | None


def dataset_blend(prepared: PreparedData) -> dict:
    """GPTDatasetConfig's blend arguments: one held-out split per dataset
    (``blend_per_split``, corpora we prepared) or megatron's ``split`` of each
    (indexed datasets), with the blend's weights (megatron normalizes them)."""
    if prepared.blend:
        train = [c["train_prefix"] for c in prepared.blend]
        weights = [float(c["weight"]) for c in prepared.blend]
        if all(c["valid_prefix"] for c in prepared.blend):
            valid = [c["valid_prefix"] for c in prepared.blend]
            return {"blend_per_split": [(train, weights), (valid, weights), None]}
        return {"blend": (train, weights), "split": prepared.split}
    if prepared.valid_prefix is not None:
        return {
            "blend_per_split": [
                ([prepared.train_prefix], None),
                ([prepared.valid_prefix], None),
                None,
            ]
        }
    return {"blend": ([prepared.train_prefix], None), "split": prepared.split}


def build_datasets(spec: JobSpec, prepared: PreparedData) -> Datasets:
    """Build train/validation GPTDatasets with megatron's BlendedMegatronDatasetBuilder.

    Collective: every rank must call it (rank 0 builds the index caches first).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    t = spec.training
    num_valid = max(1, t.eval_batches) * t.global_batch_size
    common = dict(
        random_seed=t.seed,
        sequence_length=spec.model.seq_length,
        tokenizer=_Vocabulary(prepared.vocab_size, prepared.eod),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=prepared.index_cache_dir,
        mmap_bin_files=True,
    )
    config = GPTDatasetConfig(**dataset_blend(prepared), **common)
    sizes = [t.steps * t.global_batch_size, num_valid, 0]
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return Datasets(train=train, valid=valid)


def _collate(dataset, indices: range) -> dict[str, torch.Tensor]:
    samples = [dataset[i % len(dataset)] for i in indices]
    return {k: torch.stack([s[k] for s in samples]) for k in _FIELDS}


def micro_batches(
    dataset,
    first_sample: int,
    global_batch: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's micro batches of the global batch that starts at ``first_sample``."""
    per_rank = global_batch // dp_size
    start = first_sample + dp_rank * per_rank
    for m in range(per_rank // micro_batch):
        lo = start + m * micro_batch
        yield _collate(dataset, range(lo, lo + micro_batch))
