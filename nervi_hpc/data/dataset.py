"""Training data from a renders.zarr store: a streaming Dataset, a shard-aware sampler, and
the whole collection resident on the training device when it fits.

The streaming path holds no more than a batch of images: tens of thousands of 1024² renders stay
on disk. A collection that fits (`fits_resident`) is read once instead: reading a batch of eight
128² images from the store took 48 ms, against a 107 ms training step on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import os

import numpy as np
import torch

from .store import RenderStore


def normalize(params: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Map each parameter column from its [min, max] to [-1, 1] (a constant column maps to 0)."""
    lo = np.array([r[0] for r in ranges], np.float64)
    hi = np.array([r[1] for r in ranges], np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, 2.0 * (params - lo) / span - 1.0, 0.0).astype(np.float32)


class RenderDataset(torch.utils.data.Dataset):
    """Images, masks and normalised parameters of a store, fetched a batch at a time.

    `dataset[indices]` (what DataLoader calls through `__getitems__`) returns uint8 images
    (n, 3, H, W), uint8 masks (n, 1, H, W) and float32 parameters (n, P); conversion to float
    happens on the training device, so host memory and bandwidth stay at one byte per channel.
    """

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        store = RenderStore.open(self.store_path)
        self.count, self.height, self.width = store.count, store.height, store.width
        self.shard_size = store.shard_size
        self.param_names = tuple(store.param_names)
        self.ranges = [store.ranges[n] for n in self.param_names]
        self.grids = {n: store.grids[n] for n in self.param_names}
        self.background = tuple(store.background)
        self.inputs = torch.from_numpy(normalize(store.params, self.ranges))
        self._store: RenderStore | None = None  # opened lazily in each loader process

    def __len__(self) -> int:
        return self.count

    def __getstate__(self):
        return {**self.__dict__, "_store": None}

    def __getitems__(self, indices: Sequence[int]):
        if self._store is None:
            self._store = RenderStore.open(self.store_path)
        images, masks = self._store.read(list(indices))
        return (torch.from_numpy(images).permute(0, 3, 1, 2),
                torch.from_numpy(masks)[:, None],
                self.inputs[list(indices)])

    def __getitem__(self, index: int):
        images, masks, inputs = self.__getitems__([index])
        return images[0], masks[0], inputs[0]


def keep_batch(batch):
    """DataLoader collate for batches that `__getitems__` already stacked."""
    return batch


@dataclass
class ShardAwareSampler(torch.utils.data.Sampler):
    """Batches of image indices for one rank of a distributed run.

    Each epoch the shard order is shuffled, then images are shuffled within windows of `window`
    consecutive shards: batches mix several shards while reads stay on a few shards at a time
    (what parallel file systems want). That order is cut into global batches of about
    `batch_size`, and each global batch is split across the ranks: the ranks' parts are disjoint,
    together they hold every image exactly once, every rank gets the same number of batches (DDP
    needs that), and a run on W ranks sees the same global batches as one process. The order
    depends only on (seed, epoch): reproducible, and resumable from `start_batch`.
    """

    count: int
    shard_size: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    window: int = 4
    epoch: int = 0
    start_batch: int = 0

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if min(self.batch_size, self.count) < self.world_size:
            raise ValueError(f"a global batch of {min(self.batch_size, self.count)} images "
                             f"cannot feed {self.world_size} ranks")

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.count // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self) -> np.ndarray:
        """Every index once, in this epoch's order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = [np.arange(s, min(s + self.shard_size, self.count))
                  for s in range(0, self.count, self.shard_size)]
        order = np.concatenate([shards[i] for i in rng.permutation(len(shards))])
        step = self.window * self.shard_size
        return np.concatenate([rng.permutation(order[i:i + step]) for i in range(0, self.count, step)])

    def __iter__(self) -> Iterator[list[int]]:
        batches = np.array_split(self.epoch_order(), self.batches_per_epoch)
        for batch in batches[self.start_batch:]:
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def fits_resident(count: int, height: int, width: int, device: torch.device, share: float) -> bool:
    """Whether the collection's uint8 images and masks (4 bytes a pixel) take at most `share`
    of the device's memory (the GPU's, or the host's for the CPU)."""
    if share <= 0:
        return False
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return count * height * width * 4 <= share * memory


class ResidentBatches:
    """The batches a DataLoader over `data` with `sampler` gives, from the whole collection held
    on `device` as uint8 (read from the store once, shard by shard)."""

    def __init__(self, data: RenderDataset, sampler: ShardAwareSampler, device: torch.device):
        store = RenderStore.open(data.store_path)
        self.images = torch.empty((data.count, 3, data.height, data.width), dtype=torch.uint8, device=device)
        self.masks = torch.empty((data.count, 1, data.height, data.width), dtype=torch.uint8, device=device)
        for start in range(0, data.count, data.shard_size):
            indices = list(range(start, min(start + data.shard_size, data.count)))
            images, masks = store.read(indices)
            self.images[start:start + len(indices)] = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
            self.masks[start:start + len(indices), 0] = torch.from_numpy(masks).to(device)
        self.inputs = data.inputs.to(device)
        self.sampler = sampler

    def __iter__(self):
        batches = list(self.sampler)
        if not batches:
            return
        # the epoch's indices go to the device in one copy, not one per batch
        order = torch.as_tensor(np.concatenate(batches), dtype=torch.long).to(self.images.device)
        for index in order.split([len(b) for b in batches]):
            yield self.images[index], self.masks[index], self.inputs[index]
