"""Samplers of the evaluation loaders: with several processes, every image is evaluated exactly once."""

from __future__ import annotations

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler


def eval_sampler(dataset: Dataset, trainer: object | None) -> DistributedSampler | None:
    """The sampler of a validation/test loader: with several processes, shards that hold every item exactly once.

    torch's DistributedSampler, which Lightning adds to evaluation loaders too, repeats items until every rank
    has as many (2 ranks, 5001 images: one image counted twice). Lightning keeps a loader's own
    DistributedSampler, and its UnrepeatedDistributedSampler (what it uses for predict) never repeats; torchmetrics
    then sums exact counts across ranks. Ranks may run one batch fewer than others, which is safe because the
    model has no buffers for DDP to sync and evaluation steps log only torchmetrics objects at epoch end.
    """
    world_size = int(getattr(trainer, "world_size", 1) or 1)
    if world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=int(getattr(trainer, "global_rank", 0)),
                                        shuffle=False)
