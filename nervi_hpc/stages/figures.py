"""What each stage of a run reports when it is done: the typed records a run's manifest keeps
(`stages.<stage>.figures`) and that status, watch, resume and fetch read, each with its one-line
summary; and the judgement of a finished run (`ending_warnings`). Torch-free: the job layer reads
these without loading a model.

Every field may be None: a record read back from a run of an earlier version, or one a test
writes, may hold only some of them; the stages themselves always fill them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..units import counted, human_bytes


class StageFigures:
    """A stage's figures: to_json / from_json (None for a stage that reported nothing)."""

    stage: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> "StageFigures | None":
        """The record in `raw` (a mapping of its fields), None for an empty one; TypeError or
        ValueError naming the field when `raw` is something else."""
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, dict):
            raise ValueError(f"{cls.stage} figures: {raw!r} is not a mapping")
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{cls.stage} figures: unknown field {unknown[0]!r}")
        return cls(**raw)

    def line(self) -> str:
        """The record as status shows it, in one line."""
        raise NotImplementedError


@dataclass(frozen=True)
class IngestFigures(StageFigures):
    stage: ClassVar[str] = "ingest"

    images: int | None = None
    shards: int | None = None
    raw_bytes: int | None = None
    stored_bytes: int | None = None
    seconds: float | None = None

    @classmethod
    def of(cls, result) -> "IngestFigures":
        """From stages.ingest's IngestResult."""
        return cls(images=result.count, shards=result.shards, raw_bytes=result.raw_bytes,
                   stored_bytes=result.stored_bytes, seconds=result.seconds)

    def line(self) -> str:
        return f"{self.images} images, {counted(self.shards or 0, 'shard')}, {human_bytes(self.stored_bytes or 0)}"


@dataclass(frozen=True)
class TrainFigures(StageFigures):
    stage: ClassVar[str] = "train"

    epochs: int | None = None
    epochs_planned: int | None = None
    steps: int | None = None
    seconds: float | None = None
    loss: float | None = None
    psnr: float | None = None
    parameters: int | None = None
    images_per_s: float | None = None
    stopped_early: bool | None = None
    world_size: int | None = None

    @classmethod
    def of(cls, result, epochs_planned: int, world_size: int = 1) -> "TrainFigures":
        """From stages.train's TrainResult (a job's run, or `nervi-hpc train RUN` by hand)."""
        return cls(epochs=result.epochs, epochs_planned=epochs_planned, steps=result.steps,
                   seconds=result.seconds, loss=result.loss, psnr=result.psnr, parameters=result.parameters,
                   images_per_s=result.images_per_s, stopped_early=result.stopped_early, world_size=world_size)

    def line(self) -> str:
        planned = f"/{self.epochs_planned}" if self.epochs_planned else ""
        psnr = "n/a" if self.psnr is None else f"{self.psnr:.2f} dB"
        return f"epoch {self.epochs}{planned} · training PSNR {psnr}"


@dataclass(frozen=True)
class CompressFigures(StageFigures):
    stage: ClassVar[str] = "compress"

    archive: str | None = None      # the archive's path, relative to the run's folder
    bytes: int | None = None
    sha256: str | None = None
    compression_ratio: float | None = None
    bits: int | None = None
    parameters: int | None = None
    psnr: float | None = None
    foreground_psnr: float | None = None
    ms_ssim: float | None = None

    @classmethod
    def of(cls, result, run_dir: Path, sha256: str) -> "CompressFigures":
        """From stages.compress's CompressResult, the archive's checksum given."""
        archive = cls(archive=str(result.archive.relative_to(run_dir)), bytes=result.bytes, sha256=sha256,
                      compression_ratio=result.compression_ratio, bits=result.bits, parameters=result.parameters)
        if result.evaluation is None:
            return archive
        quality = result.evaluation.headline
        return dataclasses.replace(archive, psnr=quality.psnr, foreground_psnr=quality.foreground_psnr,
                                   ms_ssim=quality.ms_ssim)

    def line(self) -> str:
        psnr = "" if self.psnr is None else f"{self.psnr:.2f}"
        cr = "?" if self.compression_ratio is None else f"{self.compression_ratio:.1f}"
        return f"{human_bytes(self.bytes or 0)}, CR {cr}, PSNR {psnr} dB → {self.archive}"


# ----------------------------------------------------------------------------------------------
# Judging a result

LOW_PSNR_DB = 20.0  # below it the decoded images differ visibly from the renders
SHORT_TRAINING = 0.5  # training stopped before this fraction of its epochs …
FEW_EPOCHS = 20  # … and before seeing each image this often. A time-bound run (epochs set high on
# purpose, the lr schedule fitted to the budget, as the demo's 1000) that got further ran its course.


def ending_warnings(epochs: int | None, planned: int | None, stopped_early: bool | None,
                    psnr: float | None) -> list[str]:
    """What a finished run should not hide: training stopped far short of its epochs by the
    time limit, or a low PSNR; each with its remedy."""
    said = []
    if stopped_early and epochs is not None and planned and epochs < min(SHORT_TRAINING * planned, FEW_EPOCHS):
        said.append(f"training stopped at the time limit after epoch {epochs} of {planned}: "
                    f"raise train.max_minutes (or resume the run with more minutes)")
    if psnr is not None and psnr < LOW_PSNR_DB:
        said.append(f"PSNR {psnr:.1f} dB is low (under {LOW_PSNR_DB:g} dB the images differ visibly): "
                    f"train longer (train.max_minutes, train.epochs) or lower model.target_cr")
    return said


def run_warnings(train: TrainFigures | None, compress: CompressFigures | None) -> list[str]:
    """`ending_warnings` of a finished run, from its train and compress figures."""
    train, compress = train or TrainFigures(), compress or CompressFigures()
    return ending_warnings(train.epochs, train.epochs_planned, train.stopped_early, compress.psnr)
