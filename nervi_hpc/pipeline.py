"""The pipeline's stages as the job layer sees them, in order (ingest: source → renders.zarr; train:
→ checkpoints; compress: → archive and evaluation): one `Stage` record each, with what
its job asks of a cluster profile by default, how it runs on more than one task, the type of the
figures it reports, and its progress line. The job layer (hpc/: resources, backends, jobs, status,
manifest) reads this registry instead of naming stages; the stages' code is in stages/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from .stages.figures import CompressFigures, IngestFigures, StageFigures, TrainFigures


@dataclass(frozen=True)
class Stage:
    name: str
    figures: type[StageFigures]
    # What the job asks for unless the profile's `stages.<name>` says otherwise: the profile's
    # nodes and tasks ("profile"), or one task on one node ("one"); and at most this many GPUs per
    # node (None: the profile's).
    tasks: Literal["profile", "one"]
    max_gpus: int | None
    # How more than one task works: DDP ranks, MPI ranks over shards, or not at all (refused).
    parallel: Literal["ddp", "mpi"] | None
    # The running job's progress record (progress.ProgressLog) as status shows it; None: the
    # stage reports its progress otherwise (training: its metrics log).
    progress_line: Callable[[dict], str] | None


PIPELINE: tuple[Stage, ...] = (
    Stage("ingest", IngestFigures, tasks="one", max_gpus=0, parallel="mpi",
          progress_line=lambda now: f"{now['images']}/{now['total']} images written"),
    Stage("train", TrainFigures, tasks="profile", max_gpus=None, parallel="ddp",
          progress_line=None),
    Stage("compress", CompressFigures, tasks="one", max_gpus=1, parallel=None,
          progress_line=lambda now: f"{now.get('step', 'compress')}: {now['images']}/{now['total']} images"),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
