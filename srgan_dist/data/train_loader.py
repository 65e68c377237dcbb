"""Endless (LR, HR) training batches per worker: the DALI pipeline, or the PIL + DataLoader path.

Both paths do the same thing to every sample:

1. take a random ``hr_patch_size`` crop of an HR image (DALI: ROI decoding, so a JPEG is only
   decoded around the crop);
2. flip it horizontally and/or vertically and transpose it (each with probability 1/2), which
   gives all 8 flips/90° rotations;
3. make LR from the augmented crop by an antialiased bicubic downscale to ``1/scale``, rounded
   to 8 bits like a real LR image (DALI ``resize(INTERP_CUBIC, antialias=True)``; PIL
   ``BICUBIC`` via ``resize.bicubic_downscale``). HR and LR are aligned by construction;
4. return float32 NCHW tensors on the worker's device: LR in [0, 1], HR in [-1, 1] (the
   generator's output range).

Both loaders read files in one order, ``shard_indices`` (DALI gets each batch's paths through
``fn.external_source``): each epoch the whole file list is shuffled with a seed derived from
(``seed``, epoch) alone, so every rank computes the same global order, and it is cut into
``world_size`` contiguous shards, so shards are disjoint; each shard is padded by repeating its
last file to ``ceil(N / world)`` samples and then to a whole batch (DALI's ``pad_last_batch``
rule), so every rank runs ``ceil(ceil(N / world) / batch)`` batches per epoch. A run resumed at
``start_epoch`` reads exactly the files an uninterrupted run reads from that epoch on. Crop and
flip randomness is seeded per rank (and per epoch and sample in the PIL path); it differs
between the two loaders (DALI's random operators vs numpy). A file list smaller than one global
batch is repeated until every shard fills a batch.

A resume also passes the batch position within the epoch (``start_position``): both loaders then
read exactly the files an uninterrupted run reads next, and the PIL path's crops and flips are
the same too (they are seeded per sample), so a resumed PIL run is bit-identical on CPU.
DALI's crops after a resume differ from an uninterrupted run's, as its random operators are
seeded per pipeline (per rank and start epoch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from srgan_dist import storage
from srgan_dist.data.objects import DaliFiles, ObjectCache
from srgan_dist.data.resize import bicubic_downscale
from srgan_dist.data.scan import DataError
from srgan_dist.pictures import load_rgb

log = logging.getLogger(__name__)

LoaderKind = Literal["dali", "pil"]


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (base seed, rank, epoch, ...), stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def batches_per_epoch(num_files: int, world_size: int, batch_size: int) -> int:
    """Batches every rank runs per epoch (DALI ``pad_last_batch`` semantics)."""
    return math.ceil(math.ceil(num_files / world_size) / batch_size)


def shard_indices(
    num_files: int, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int
) -> list[int]:
    """File indices rank ``rank`` reads in ``epoch``, padded to whole batches (DALI's order rule)."""
    order = np.random.default_rng(derive_seed(seed, epoch)).permutation(num_files)
    begin, end = num_files * rank // world_size, num_files * (rank + 1) // world_size
    shard = order[begin:end].tolist()
    padded = batches_per_epoch(num_files, world_size, batch_size) * batch_size
    return shard + [shard[-1]] * (padded - len(shard))


def augment_pair(hr_image: np.ndarray, *, scale: int, hr_patch_size: int, rng: np.random.Generator):
    """Random crop + flips/transpose of an HxWx3 uint8 image → (lr_hwc, hr_hwc) uint8 (PIL path)."""
    height, width = hr_image.shape[:2]
    top = int(rng.integers(0, height - hr_patch_size + 1))
    left = int(rng.integers(0, width - hr_patch_size + 1))
    hr = hr_image[top : top + hr_patch_size, left : left + hr_patch_size]
    if rng.random() < 0.5:
        hr = hr[:, ::-1]
    if rng.random() < 0.5:
        hr = hr[::-1, :]
    if rng.random() < 0.5:
        hr = hr.transpose(1, 0, 2)
    hr = np.ascontiguousarray(hr)
    return bicubic_downscale(hr, scale), hr


class _PilPairs(torch.utils.data.Dataset):
    """Map-style dataset: item ``(file_index, sample_seed)`` → (LR CHW in [0,1], HR CHW in [-1,1]).
    Files may be object URIs (read whole, or from ``cache``'s node-local copies)."""

    def __init__(self, files: list[str], scale: int, hr_patch_size: int, cache: ObjectCache | None):
        self.files, self.scale, self.hr_patch_size = files, scale, hr_patch_size
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        index, sample_seed = item
        file = self.files[index]
        lr, hr = augment_pair(
            load_rgb(self.cache.local(file) if self.cache else file),
            scale=self.scale,
            hr_patch_size=self.hr_patch_size,
            rng=np.random.default_rng(sample_seed),
        )
        lr_t = torch.from_numpy(np.array(lr)).permute(2, 0, 1).float().div_(255.0)
        hr_t = torch.from_numpy(hr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return lr_t, hr_t


class EndlessBatches(torch.utils.data.Sampler):
    """Yields batches of ``(file_index, sample_seed)`` for epoch ``start_epoch``, ``+1``, ... forever,
    starting at batch ``start_position`` of the first epoch.

    The file order of both loaders: the PIL path uses it as the DataLoader's batch sampler, the
    DALI path turns each batch into paths for its ``external_source``.
    """

    def __init__(self, num_files, *, rank, world_size, batch_size, seed, start_epoch, start_position=0):
        self.num_files, self.rank, self.world_size = num_files, rank, world_size
        self.batch_size, self.seed, self.start_epoch = batch_size, seed, start_epoch
        self.start_position = start_position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.start_epoch
        while True:
            indices = shard_indices(
                self.num_files,
                rank=self.rank,
                world_size=self.world_size,
                batch_size=self.batch_size,
                seed=self.seed,
                epoch=epoch,
            )
            items = [(i, derive_seed(self.seed, self.rank, epoch, k)) for k, i in enumerate(indices)]
            skip = self.start_position * self.batch_size if epoch == self.start_epoch else 0
            for start in range(skip, len(items), self.batch_size):
                yield items[start : start + self.batch_size]
            epoch += 1


@dataclass(frozen=True)
class LoaderPlan:
    """What both batch sources need: this rank's files, shapes, seeds and where to start."""

    files: list[str]
    scale: int
    hr_patch_size: int
    batch_size: int
    rank: int
    world_size: int
    device: torch.device
    seed: int
    num_threads: int
    start_epoch: int
    start_position: int
    cache_dir: str = ""
    """``data.cache_dir``: the node-local copy of objects read from a bucket (empty: none)."""

    def sampler(self) -> EndlessBatches:
        return EndlessBatches(
            len(self.files),
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            seed=self.seed,
            start_epoch=self.start_epoch,
            start_position=self.start_position,
        )


def _pil_batches(plan: LoaderPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # Loader processes that read a bucket start from a fresh process (forkserver), not a fork of
    # this one: a storage client's threads and locks do not survive a fork (a GCS read in a
    # forked child hung once this process had run DALI's S3 reader).
    reads_objects = any(storage.is_uri(file) for file in plan.files)
    loader = torch.utils.data.DataLoader(
        _PilPairs(
            plan.files,
            plan.scale,
            plan.hr_patch_size,
            ObjectCache(plan.cache_dir) if plan.cache_dir else None,
        ),
        batch_sampler=plan.sampler(),
        num_workers=plan.num_threads,
        pin_memory=plan.device.type == "cuda",
        persistent_workers=False,
        multiprocessing_context="forkserver" if reads_objects and plan.num_threads > 0 else None,
    )
    for lr, hr in loader:
        yield lr.to(plan.device, non_blocking=True), hr.to(plan.device, non_blocking=True)


def _dali_batches(plan: LoaderPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    from srgan_dist.data.dali_pipeline import sr_train_pipeline

    device = plan.device
    on_gpu = device.type == "cuda"
    device_id = (
        (device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else None
    )
    inputs = DaliFiles(plan.files, cache_dir=plan.cache_dir, num_threads=plan.num_threads)
    input_batches = (inputs.batch([plan.files[index] for index, _ in batch]) for batch in plan.sampler())
    pipe = sr_train_pipeline(
        input_batches=input_batches,
        reads_files=inputs.reads_files,
        decode_device="mixed" if on_gpu else "cpu",
        scale=plan.scale,
        hr_patch_size=plan.hr_patch_size,
        batch_size=plan.batch_size,
        num_threads=plan.num_threads,
        device_id=device_id,
        seed=derive_seed(plan.seed, plan.rank, plan.start_epoch, 1),
    )
    pipe.build()
    # No reader: the source never ends, so neither does the iterator (epochs are counted by
    # TrainLoader from batches_per_epoch, the sampler's own epoch length).
    iterator = DALIGenericIterator([pipe], ["lr", "hr"])
    try:
        for outputs in iterator:
            yield outputs[0]["lr"], outputs[0]["hr"]
    finally:
        del iterator, pipe


class TrainLoader:
    """Endless iterator of ``(lr_BCHW, hr_BCHW)`` that knows its epoch and position.

    ``position`` counts the batches consumed in ``epoch``; after ``batches_per_epoch`` of them the
    epoch advances. ``state_dict()`` is what a checkpoint keeps; resuming passes its ``epoch`` and
    ``position`` as ``start_epoch`` and ``start_position``.
    """

    def __init__(
        self,
        batches: Iterator,
        *,
        batches_per_epoch: int,
        start_epoch: int,
        start_position: int = 0,
    ):
        self.batches_per_epoch = batches_per_epoch
        self.epoch = start_epoch
        self.position = start_position
        self._batches = batches

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            raise RuntimeError("TrainLoader is closed")
        batch = next(self._batches)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def build_train_loader(
    files: list[str],
    *,
    loader: LoaderKind,
    scale: int,
    hr_patch_size: int,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    seed: int,
    num_threads: int,
    start_epoch: int = 0,
    start_position: int = 0,
    cache_dir: str = "",
) -> TrainLoader:
    """The training batches of rank ``rank`` of ``world_size`` (see the module docstring)."""
    if not files:
        raise DataError("data.train: no files to train on")
    if hr_patch_size % scale:
        raise DataError(f"hr_patch_size={hr_patch_size} is not a multiple of model.scale={scale}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    device = torch.device(device)
    if loader == "dali" and not dali_available():
        log.warning(
            "data.loader=dali but NVIDIA DALI cannot be imported: falling back to the slower "
            "PIL + DataLoader path (pip install nvidia-dali-cuda130 to fix)"
        )
        loader = "pil"
    files = list(files)
    repeats = math.ceil(world_size * batch_size / len(files))
    if repeats > 1:
        log.info(
            "data.train: %d file(s) < one global batch of %d; repeating the list %dx per epoch",
            len(files),
            world_size * batch_size,
            repeats,
        )
        files = files * repeats
    per_epoch = batches_per_epoch(len(files), world_size, batch_size)
    if not 0 <= start_position < per_epoch:
        raise ValueError(f"start_position {start_position} outside an epoch of {per_epoch} batches")
    plan = LoaderPlan(
        files=files,
        scale=scale,
        hr_patch_size=hr_patch_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        device=device,
        seed=seed,
        num_threads=num_threads,
        start_epoch=start_epoch,
        start_position=start_position,
        cache_dir=cache_dir,
    )
    batches = _dali_batches(plan) if loader == "dali" else _pil_batches(plan)
    where = f"{'GPU decode' if device.type == 'cuda' and loader == 'dali' else 'CPU decode'} on {device}"
    log.info(
        "rank %d/%d: %s training loader, %s, %d file(s), %d batch(es) per epoch",
        rank,
        world_size,
        loader,
        where,
        len(files),
        per_epoch,
    )
    return TrainLoader(
        batches,
        batches_per_epoch=per_epoch,
        start_epoch=start_epoch,
        start_position=start_position,
    )
