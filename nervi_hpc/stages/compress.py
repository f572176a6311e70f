"""Compress a trained run: latest complete checkpoint → quantize → `archive/<name>.nervi` → evaluate.

The archive's metadata (nervi_hpc.codec.header.ArchiveMeta) is everything a recipient needs to decode
and to judge the file: model config, parameter names/ranges/grids, image size, background, mode,
image count, training figures and quantization bits. Evaluation figures are not put in the
archive (that would change the file whose size they report); they go to `eval/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codec.archive import compression_ratio, write_archive
from ..codec.header import ArchiveMeta, Parameter
from ..codec.prune import prune as prune_weights
from ..codec.quantize import quantize
from ..data.store import RenderStore
from ..errors import ConfigError, NerviError, StoreError
from ..model import checkpoint
from ..model.checkpoint import CheckpointRecord
from ..paths import RunPaths
from ..progress import ProgressLog
from .evaluate.measure import evaluate as evaluate_archive
from ..units import bits_per_parameter, finite_or_none
from .evaluate.summary import EvalResult


@dataclass(frozen=True)
class CompressResult:
    """The archive written from `checkpoint`, its size figures and the evaluation (if run)."""

    archive: Path
    bytes: int
    bits: int
    parameters: int
    images: int
    height: int
    width: int
    checkpoint: Path
    evaluation: EvalResult | None

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.images, self.height, self.width, self.bytes)

    @property
    def bits_per_parameter(self) -> float:
        return bits_per_parameter(self.bytes, self.parameters)

    def summary(self) -> str:
        if self.evaluation is None:
            quality = "not evaluated"
        else:
            psnr, foreground = self.evaluation.headline.psnr, self.evaluation.headline.foreground_psnr
            quality = (f"PSNR {'n/a' if psnr is None else f'{psnr:.2f} dB'}"
                       f" (foreground {'n/a' if foreground is None else f'{foreground:.2f} dB'})")
        return (f"{self.archive}: {self.bytes:,} bytes, CR {self.compression_ratio:.1f} "
                f"({self.bits}-bit, {self.bits_per_parameter:.2f} bits/parameter), {quality}")


def compress(run_dir: str | os.PathLike, *, bits: int | None = None, name: str | None = None,
             evaluate: bool = True, device: str | torch.device | None = None,
             progress: bool = False, prune: float | None = None,
             source: str | os.PathLike | None = None, lines: ProgressLog | None = None) -> CompressResult:
    """Write `run_dir/archive/<name>.nervi` from the latest complete checkpoint (or the
    checkpoint folder `source`, e.g. a snapshot), then (unless `evaluate` is false) evaluate it
    against the run's store into `run_dir/eval/`.

    `bits` defaults to the run's `model.bits` (what it was sized and trained for, else 9).
    `name` defaults to the dataset's name; it must be a plain file name stem. `prune`: the
    fraction of weights zeroed by global magnitude pruning before quantization (codec.prune).
    `lines` reports the evaluation's progress (a job's log and `watch`).
    """
    paths = RunPaths(Path(run_dir))
    found = Path(source) if source is not None else checkpoint.latest(paths.checkpoints)
    if found is None:
        raise NerviError(f"{paths.checkpoints}: no complete checkpoint; train the run first")
    state, config = checkpoint.load(found)
    if bits is None:
        bits = config.model_spec.archive_bits
    store = RenderStore.open(paths.store)
    meta = archive_meta(state, config, found.name, store, bits, _final_figures(paths.metrics, state["step"]))
    weights = state["model"]
    if prune is not None:
        weights = prune_weights(weights, prune)
        meta = dataclasses.replace(meta, training={**meta.training, "pruned": prune})
    name = name or config.name or paths.root.name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"archive name {name!r}: expected a plain file name (no path separators)")
    path = paths.archive_dir / f"{name}.nervi"
    quantized = quantize(weights, bits)
    size = write_archive(path, quantized, meta.to_json())
    evaluation = (evaluate_archive(path, paths.store, paths.eval_dir, device=device, progress=progress,
                                   lines=lines)
                  if evaluate else None)
    return CompressResult(archive=path, bytes=size, bits=bits, parameters=quantized.parameter_count,
                          images=store.count, height=store.height, width=store.width, checkpoint=found,
                          evaluation=evaluation)


def archive_meta(state: dict, config: CheckpointRecord, checkpoint_name: str, store: RenderStore, bits: int,
                 final: dict[str, Any]) -> ArchiveMeta:
    """The archive metadata of checkpoint `checkpoint_name` (`state`, `config`) trained on
    `store`; `final` holds the loss and PSNR logged at the checkpoint's step."""
    names = config.param_names
    if names != store.param_names or (config.height, config.width) != (store.height, store.width):
        raise StoreError(f"{store.path}: holds {store.width}×{store.height} images of "
                         f"{', '.join(store.param_names)}, but the checkpoint was trained on "
                         f"{config.width}×{config.height} images of {', '.join(names)}")
    grids = store.grids
    parameters = tuple(Parameter(n, float(low), float(high), tuple(float(v) for v in grids[n]))
                       for n, (low, high) in zip(names, config.ranges))
    params = store.params
    full_grid = (math.prod(len(p.grid) for p in parameters) == len(params)
                 and len(np.unique(params, axis=0)) == len(params))
    training = {
        "dataset": config.name, "checkpoint": checkpoint_name,
        "epochs": state.get("epoch"), "epochs_planned": config.epochs_planned,
        "steps": state.get("step"), "seconds": finite_or_none(state.get("seconds")),
        "loss": finite_or_none(final.get("loss")), "psnr": finite_or_none(final.get("psnr")),
        "stopped_early": config.stopped_early, "peak_lr": config.peak_lr,
    }
    return ArchiveMeta(model=config.model, parameters=parameters,
                       height=store.height, width=store.width, background=config.background,
                       mode=store.mode, count=store.count, bits=bits, training=training,
                       points=None if full_grid else tuple(tuple(row) for row in params.tolist()),
                       source=store.source)


def _final_figures(metrics: Path, step: int) -> dict[str, Any]:
    """The last metrics-log record with a loss at `step` (the checkpoint's), or {}: figures
    logged at another step would not describe this checkpoint."""
    found: dict[str, Any] = {}
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(record, dict) and record.get("step") == step and "loss" in record:
            found = record
    return found
