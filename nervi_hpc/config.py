"""dataset.yaml and cluster.yaml as dataclasses, loaded strictly (nervi_hpc.schema builds and
checks them, key by key and value by value)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from .errors import ConfigError
from .model.spec import ModelSpec
from .pipeline import STAGES
from .schema import Grid, build, check, read_yaml


RGB = tuple[int, int, int]


def _positive(v) -> bool:
    return v > 0


def _auto_or_positive(v) -> bool:
    return v == "auto" or _positive(v)


def _size(v) -> bool:
    return len(v) == 2 and all(8 <= x <= 8192 for x in v)


def _rgb(v) -> bool:
    return v is None or (len(v) == 3 and all(0 <= x <= 255 for x in v))


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic scene rendered by nervi_hpc.data.sources.raycast (no user data needed)."""

    kind: Literal["synthetic"]
    scene: Literal["tornado", "blobs"] = "tornado"
    mode: Literal["ir", "dvr"] = "ir"
    size: tuple[int, int] = field(default=(256, 256), metadata=check(_size, "[height, width], each 8..8192"))
    t: Grid = Grid((0.0,))
    theta: Grid = Grid(tuple(float(v) for v in range(0, 172, 9)))
    phi: Grid = Grid(tuple(float(v) for v in range(0, 352, 9)))
    isovalue: float | None = None
    volume: int = field(default=128, metadata=check(lambda v: 16 <= v <= 512, "16..512 voxels per side"))
    seed: int = 0


@dataclass(frozen=True)
class CinemaSource:
    """A Cinema database (spec D): `data.csv` with parameter columns, then FILE columns."""

    kind: Literal["cinema"]
    path: str
    background: RGB | None = field(default=None, metadata=check(_rgb, "[r, g, b] in 0..255"))
    mask_tolerance: int = field(default=0, metadata=check(lambda v: 0 <= v <= 255, "0..255"))
    mode: Literal["ir", "dvr", "unknown"] = "unknown"
    allow_outside: bool = False  # FILE values may name images outside the database's folder


@dataclass(frozen=True)
class FolderSource:
    """A folder of images whose file names carry the parameters, e.g. `t{t}_theta{theta}_phi{phi}.png`."""

    kind: Literal["folder"]
    path: str
    pattern: str
    background: RGB | None = field(default=None, metadata=check(_rgb, "[r, g, b] in 0..255"))
    mask_tolerance: int = field(default=0, metadata=check(lambda v: 0 <= v <= 255, "0..255"))
    mode: Literal["ir", "dvr", "unknown"] = "unknown"


SourceSpec = Union[SyntheticSource, CinemaSource, FolderSource]
SOURCE_KINDS = {"synthetic": SyntheticSource, "cinema": CinemaSource, "folder": FolderSource}


@dataclass(frozen=True)
class IngestSpec:
    """How a source becomes a sharded Zarr store."""

    shard_size: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive image count"))
    workers: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive count"))


@dataclass(frozen=True)
class TrainSpec:
    """How the network is fitted. Sizes left out (None) are chosen from the image size.

    The defaults are nervi-hpc's recipe (docs/benchmarks.md); the paper's loss is
    `mask_loss: l1, ssim_weight: 0.3, composite_weight: 0` (and lr 5e-4). `lr: auto` is 1e-3 up
    to 32 channels (c2) and 1e-3·32/c2 above (stages/schedule.py, peak_lr). `snapshot_minutes`
    keeps a copy of the weights at those training times in `snapshots/` (for PSNR-vs-time curves);
    `until_gain_db` stops training once the training PSNR gained less than that over the last
    quarter of the training time (convergence), whatever `epochs` and `max_minutes` allow, after
    a cooldown of `cooldown_share` of the time trained until then.
    `clip_grad` > 0 clips the gradients' global norm to it before each step (1, as HiNeRV: without
    it a grid run collapsed at the peak lr, docs/benchmarks.md). `composite_weight` weighs the
    composite's MSE, what PSNR measures, against the L1 and mask terms: at 1 the L1 terms dominate
    late in training (an MSE of 1e-3 against L1 terms of ~0.02); 100 gave +1.3 dB at 300 epochs.
    `mask_weight` scales the mask term (model/loss.py, nervi_loss).
    `clock` "cpu" counts `max_minutes`, `snapshot_minutes` and the cooldown in this process's
    CPU time instead of wall-clock time: a fair budget on a shared machine (one thread per run).
    `resident_share`: the collection is loaded once onto the training device when its uint8
    images and masks take at most this share of the device's memory (0: always stream it).
    `qat` trains the cooldown quantization-aware at `model.bits`: each step's gradient is taken
    at the weights as the archive will hold them and applied to the float weights (without
    `until_gain_db`, the cooldown is the last `cooldown_share` of the run).
    `sync_every`: the steps between the loop's reads of the clock, agreed across ranks (time
    budget, checkpoints, snapshots), read at each epoch's start too; loss and PSNR are summed on
    the device and read once an epoch. `fused_adam` steps Adam in one kernel; `compile` runs the forward pass and loss
    through torch.compile (minutes of compiling first; docs/benchmarks.md). The loop as it was
    before issue 13 is `resident_share: 0, sync_every: 1, fused_adam: false`.
    """

    epochs: int = field(default=300, metadata=check(_positive, "a positive count"))
    batch_size: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                "a positive global batch size"))
    lr: float | Literal["auto"] = field(default="auto",
                                        metadata=check(_auto_or_positive, "a positive learning rate, or auto"))
    schedule: Literal["cosine", "constant"] = "cosine"
    mask_loss: Literal["l1", "bce"] = "bce"
    ssim_weight: float = field(default=0.0, metadata=check(lambda v: v >= 0, "a weight ≥ 0"))
    composite_weight: float = field(default=100.0, metadata=check(lambda v: v >= 0, "a weight ≥ 0"))
    mask_weight: float = field(default=1.0, metadata=check(lambda v: v >= 0, "a weight ≥ 0"))
    warmup: float = field(default=0.05, metadata=check(lambda v: 0 <= v < 1, "a fraction in [0, 1)"))
    final_lr: float = field(default=0.01, metadata=check(lambda v: 0 <= v <= 1, "a fraction of lr in [0, 1]"))
    seed: int = 0
    max_minutes: float | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                   "a positive number of minutes"))
    checkpoint_minutes: float = field(default=10.0, metadata=check(_positive, "a positive number of minutes"))
    keep_latest_k: int = field(default=2, metadata=check(_positive, "a positive count"))
    loader_workers: int = field(default=2, metadata=check(lambda v: v >= 0, "0 or more"))
    clip_grad: float = field(default=1.0, metadata=check(lambda v: v >= 0, "0 (off) or a positive norm"))
    cooldown_share: float = field(default=0.2, metadata=check(lambda v: 0 < v <= 1, "a fraction in (0, 1]"))
    clock: Literal["wall", "cpu"] = "wall"
    resident_share: float = field(default=0.25, metadata=check(lambda v: 0 <= v <= 0.9, "a fraction in [0, 0.9]"))
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: bool = True
    compile: bool = False
    fused_adam: bool = True
    sync_every: int = field(default=16, metadata=check(_positive, "a positive number of steps"))
    snapshot_minutes: list[float] = field(default_factory=list, metadata=check(
        lambda v: all(m > 0 for m in v), "positive numbers of training minutes"))
    until_gain_db: float | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                     "a positive number of dB"))
    qat: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset.yaml: what to compress and how.

    `model` is the checked `model:` section (a preset, architecture overrides, sizing): all but
    what depends on the image size, which the model's build checks.
    """

    name: str = field(metadata=check(lambda v: v and all(c.isalnum() or c in "-_." for c in v),
                                     "letters, digits, '-', '_' or '.'"))
    source: SourceSpec
    ingest: IngestSpec = IngestSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()




def _gpus(v) -> bool:
    return v == "auto" or v >= 0


@dataclass(frozen=True)
class StageResources:
    """Per-stage overrides of a profile's resources (a field left out keeps the stage's default).

    A stage on its own `partition` does not inherit the profile's `constraint` (node features
    belong to a partition), and its `setup` lines replace the profile's (a CPU job needs no
    `module load cuda`)."""

    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive count"))
    gpus_per_node: int | None = field(default=None, metadata=check(lambda v: v is None or v >= 0, "0 or more"))
    tasks_per_node: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                    "a positive count"))
    cpus_per_task: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                   "a positive count"))
    mem_gb: float | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive size"))
    time_min: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                              "a positive number of minutes"))
    setup: list[str] | None = None


@dataclass(frozen=True)
class Profile:
    """One executor profile: where and with what resources the stages run.

    The resources describe the training job; ingest defaults to one node without GPUs and
    compress to one task with at most one GPU. `stages` overrides any of them per stage.
    `gpus_per_node: auto` (local only) gives the local jobs every GPU of this machine, and the
    training job one task (DDP rank) per GPU; `tasks_per_node` counts only without it.
    """

    executor: Literal["local", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = field(default=1, metadata=check(_positive, "a positive count"))
    gpus_per_node: int | Literal["auto"] = field(default="auto", metadata=check(_gpus, "0 or more, or auto"))
    tasks_per_node: int = field(default=1, metadata=check(_positive, "a positive count"))
    cpus_per_task: int = field(default=2, metadata=check(_positive, "a positive count"))
    mem_gb: float = field(default=8.0, metadata=check(_positive, "a positive size"))
    time_min: int = field(default=60, metadata=check(_positive, "a positive number of minutes"))
    signal_delay_s: int = field(default=90, metadata=check(lambda v: v >= 5, "5 seconds or more"))
    max_requeues: int = field(default=5, metadata=check(lambda v: v >= 0, "0 or more"))
    mpi: str | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    stages: dict[str, StageResources] = field(default_factory=dict)

    def __post_init__(self):
        if self.executor == "slurm" and self.gpus_per_node == "auto":
            raise ConfigError("gpus_per_node: 'auto' (this machine's GPUs) is for the local executor; "
                              "a slurm profile needs a count (0 for CPU-only nodes)")
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ConfigError(f"stages: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")


def local_profile() -> Profile:
    """The built-in profile (no cluster.yaml): this machine, its GPUs, training in one thread.

    Why one thread: the model's small convolutions and elementwise work do not scale over
    intra-op threads (2 threads trained no faster than 1 on 2 idle cores), and OpenMP's
    spin-waiting threads collapse when anything else wants the cores: on 2 cores shared with 2
    other jobs, 2 threads trained 4 epochs of the demo in a minute where 1 thread trained 39
    (docs/benchmarks.md, "Threads")."""
    return Profile(stages={"train": StageResources(cpus_per_task=1)})


@dataclass(frozen=True)
class ClusterConfig:
    """cluster.yaml: storage root and executor profiles."""

    storage_root: str = "storage"
    default_profile: str = "local"
    profiles: dict[str, Profile] = field(default_factory=lambda: {"local": local_profile()})

    def __post_init__(self):
        if self.default_profile not in self.profiles:
            raise ConfigError(f"default_profile: {self.default_profile!r} is not one of the profiles "
                              f"({', '.join(sorted(self.profiles))})")

    def profile(self, name: str | None = None) -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r} (profiles: {', '.join(sorted(self.profiles))})")
        return self.profiles[name]


def _load(cls, path):
    raw = read_yaml(path)
    try:
        return build(cls, {} if raw is None and cls is ClusterConfig else raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_dataset(path: str | os.PathLike) -> DatasetSpec:
    """Load a dataset.yaml. Relative source paths are resolved against the file's folder."""
    spec = _load(DatasetSpec, path)
    source = spec.source
    if hasattr(source, "path") and not os.path.isabs(source.path):
        source = dataclasses.replace(source, path=str((Path(path).parent / source.path).resolve()))
    return dataclasses.replace(spec, source=source)


def load_cluster(path: str | os.PathLike | None = None) -> ClusterConfig:
    """Load cluster.yaml (default: $NERVI_CLUSTER, else ./cluster.yaml, else built-in local)."""
    path = path or os.environ.get("NERVI_CLUSTER") or ("cluster.yaml" if Path("cluster.yaml").exists() else None)
    if path is None:
        return ClusterConfig()
    cfg = _load(ClusterConfig, path)
    root = Path(cfg.storage_root)
    if not root.is_absolute():
        cfg = dataclasses.replace(cfg, storage_root=str((Path(path).parent / root).resolve()))
    return cfg
