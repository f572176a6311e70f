"""The stage jobs: submitit `Checkpointable` callables, one per stage, run on the executor.

Each job records its start, result or failure in the run's manifest (task 0 only) and prints a
few lines to its log. Being Checkpointable, a job hit by its time limit or preempted is requeued
with the same callable, and the stage resumes from what is on disk: ingest skips its finished
shards, training restarts from the newest complete checkpoint, compress simply runs again.
A job whose stage was cancelled before it started does nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import ClassVar

import submitit

from .. import atomic
from ..config import load_dataset
from ..paths import RunPaths
from ..progress import ProgressLog
from ..stages.figures import CompressFigures, IngestFigures, StageFigures, TrainFigures
from . import manifest
from .resources import Resources


class StageJob(submitit.helpers.Checkpointable):
    """Run one stage of the run in `run_dir` with `cpus` CPU threads per task."""

    stage: ClassVar[str]

    def __init__(self, run_dir: str, cpus: int):
        self.run_dir = run_dir
        self.cpus = cpus

    def __call__(self) -> StageFigures | None:
        paths = RunPaths(Path(self.run_dir))
        env = submitit.JobEnvironment()
        lead = env.global_rank == 0
        if lead:  # records the start, unless the stage was cancelled meanwhile
            go = manifest.update(paths, lambda m: m.started(self.stage))
        else:
            go = manifest.read(paths).stages[self.stage].state != "cancelled"
        if not go:
            _say(f"{self.stage}: the run was cancelled; not starting")
            return None
        _say(f"{self.stage}: job {env.job_id} task {env.global_rank}/{env.num_tasks} on {env.hostname}")
        _limit_threads(self.cpus)
        try:
            figures = self.run(paths)
        except Exception as error:  # a requeue or cancellation (SystemExit, KeyboardInterrupt) is no failure
            if lead:
                manifest.update(paths, lambda m: m.failed(self.stage, one_line(error)))
            raise
        if lead:
            manifest.update(paths, lambda m: m.finished(self.stage, figures))
            _say(f"{self.stage}: done")
        return figures

    def run(self, paths: RunPaths) -> StageFigures | None:
        raise NotImplementedError


class IngestJob(StageJob):
    """Source → renders.zarr; parallel over shards (worker processes, or the MPI ranks of the job)."""

    stage = "ingest"

    def run(self, paths: RunPaths) -> StageFigures | None:
        from ..data.sources import open_source
        from ..stages.ingest.run import ingest

        spec = load_dataset(paths.spec)
        result = ingest(open_source(spec.source), paths.store, shard_size=spec.ingest.shard_size,
                        workers=spec.ingest.workers or self.cpus, progress=False,
                        lines=ProgressLog("ingest", paths.progress("ingest")))
        if result.rank == 0:
            _say(result.summary())
        return IngestFigures.of(result)


class TrainJob(StageJob):
    """Fit the model; one task per GPU (or CPU process), DDP from submitit's environment."""

    stage = "train"

    def run(self, paths: RunPaths) -> StageFigures | None:
        from ..stages.train import train

        distributed = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)  # train picks the GPU by local rank
        spec = load_dataset(paths.spec)
        result = train(paths.root, spec, max_minutes=manifest.read(paths).train_minutes, progress=False)
        _say(result.summary())
        return TrainFigures.of(result, spec.train.epochs, distributed.world_size)


class CompressJob(StageJob):
    """Latest checkpoint → archive/<name>.nervi → eval/ (summary, contact sheet)."""

    stage = "compress"

    def run(self, paths: RunPaths) -> StageFigures | None:
        from ..stages.compress import compress

        result = compress(paths.root, progress=False, lines=ProgressLog("compress", paths.progress("compress")))
        _say(result.summary())
        return CompressFigures.of(result, paths.root, atomic.file_sha256(result.archive))


STAGE_JOBS: dict[str, type[StageJob]] = {job.stage: job for job in (IngestJob, TrainJob, CompressJob)}


def job_for(stage: str, paths: RunPaths, res: Resources) -> StageJob:
    """The callable a backend submits for `stage` of the run in `paths` (pickled by reference)."""
    return STAGE_JOBS[stage](str(paths.root), res.cpus_per_task)


def one_line(error: BaseException, limit: int = 400) -> str:
    """An exception as one line: `Type: first line of the message` (NerviErrors without the type)."""
    from ..errors import NerviError

    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = text if isinstance(error, NerviError) else f"{type(error).__name__}: {text}".rstrip(": ")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _limit_threads(cpus: int) -> None:
    """CPU threads of this task: what the job was given, not every core of the node."""
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    import torch

    torch.set_num_threads(cpus)


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [nervi-hpc] {message}", file=sys.stdout, flush=True)
