"""dataset.yaml and cluster.yaml as dataclasses, loaded strictly.

Every section is a frozen dataclass; `build(cls, raw, where)` turns parsed YAML into it and
checks each key against the fields (an unknown key names itself and lists the valid ones) and
each value against the field's type and `check` (a bad value names the field and the value).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

RGB = tuple[int, int, int]
MAX_GRID_VALUES = 1_000_000   # values of one parameter grid ({start, stop, step} is checked before it is built)
MAX_YAML_VALUES = 100_000     # values a YAML file may expand to: aliases make a 600-byte file a billion


def check(predicate, message: str):
    """Field metadata: a value must satisfy `predicate`; `message` says what was expected."""
    return {"check": (predicate, message)}


# ----------------------------------------------------------------------------------------------
# Parameter grids


@dataclass(frozen=True)
class Grid:
    """Sorted, distinct values of one parameter. YAML: a number, a list, or {start, stop, step}
    (stop inclusive when it lies on the step)."""

    values: tuple[float, ...]

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Grid":
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, a list or {{start, stop, step}}, got {raw!r}")
        if isinstance(raw, (int, float)):
            values = [float(raw)]
        elif isinstance(raw, list):
            values = [_number(v, f"{where}[{i}]") for i, v in enumerate(raw)]
        elif isinstance(raw, dict):
            spec = build(_Range, raw, where)
            count = math.floor((spec.stop - spec.start) / spec.step + 1e-9) + 1
            if count > MAX_GRID_VALUES:
                raise ConfigError(f"{where}: {{start: {spec.start:g}, stop: {spec.stop:g}, step: {spec.step:g}}} "
                                  f"has {count:,} values (at most {MAX_GRID_VALUES:,})")
            values = [spec.start + i * spec.step for i in range(count)]
        else:
            raise ConfigError(f"{where}: expected a number, a list or {{start, stop, step}}, got {raw!r}")
        if not values:
            raise ConfigError(f"{where}: empty grid")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: repeated values in {values}")
        return cls(tuple(sorted(values)))


@dataclass(frozen=True)
class _Range:
    start: float
    stop: float
    step: float = field(metadata=check(lambda v: v > 0, "a positive step"))

    def __post_init__(self):
        if self.stop < self.start:
            raise ConfigError(f"stop {self.stop} < start {self.start}")


# ----------------------------------------------------------------------------------------------
# dataset.yaml


def _positive(v) -> bool:
    return v > 0


def _size(v) -> bool:
    return len(v) == 2 and all(8 <= x <= 8192 for x in v)


def _rgb(v) -> bool:
    return v is None or (len(v) == 3 and all(0 <= x <= 255 for x in v))


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic scene rendered by nervi_hpc.render (no user data needed)."""

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
    `mask_loss: l1, ssim_weight: 0.3, composite_weight: 0`. `snapshot_minutes` keeps a copy of
    the weights at those training times in `snapshots/` (for PSNR-vs-time curves);
    `until_gain_db` stops training once the training PSNR gained less than that over the last
    quarter of the training time (convergence), whatever `epochs` and `max_minutes` allow, after
    a cooldown of `cooldown_share` of the time trained until then.
    `clip_grad` > 0 clips the gradients' global norm to it before each step (1, as HiNeRV: without
    it a grid run collapsed at the peak lr, docs/benchmarks.md).
    `clock` "cpu" counts `max_minutes`, `snapshot_minutes` and the cooldown in this process's
    CPU time instead of wall-clock time: a fair budget on a shared machine (one thread per run).
    `resident_share`: the collection is loaded once onto the training device when its uint8
    images and masks take at most this share of the device's memory (0: always stream it).
    `sync_every`: the steps between the loop's reads of the clock, agreed across ranks (time
    budget, checkpoints, snapshots), read at each epoch's start too; loss and PSNR are summed on
    the device and read once an epoch. `fused_adam` steps Adam in one kernel; `compile` runs the forward pass and loss
    through torch.compile (minutes of compiling first; docs/benchmarks.md). The loop as it was
    before issue 13 is `resident_share: 0, sync_every: 1, fused_adam: false`.
    """

    epochs: int = field(default=300, metadata=check(_positive, "a positive count"))
    batch_size: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                "a positive global batch size"))
    lr: float = field(default=1e-3, metadata=check(_positive, "a positive learning rate"))
    schedule: Literal["cosine", "constant"] = "cosine"
    mask_loss: Literal["l1", "bce"] = "bce"
    ssim_weight: float = field(default=0.0, metadata=check(lambda v: v >= 0, "a weight ≥ 0"))
    composite_weight: float = field(default=1.0, metadata=check(lambda v: v >= 0, "a weight ≥ 0"))
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


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset.yaml: what to compress and how.

    `model` holds a preset name and architecture overrides; `load_dataset` checks its keys and
    values (all but what depends on the image size, which the model's build checks).
    """

    name: str = field(metadata=check(lambda v: v and all(c.isalnum() or c in "-_." for c in v),
                                     "letters, digits, '-', '_' or '.'"))
    source: SourceSpec
    ingest: IngestSpec = IngestSpec()
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainSpec = TrainSpec()


# ----------------------------------------------------------------------------------------------
# cluster.yaml


STAGES = ("ingest", "train", "compress")


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


@dataclass(frozen=True)
class ClusterConfig:
    """cluster.yaml: storage root and executor profiles."""

    storage_root: str = "storage"
    default_profile: str = "local"
    profiles: dict[str, Profile] = field(default_factory=lambda: {"local": Profile()})

    def __post_init__(self):
        if self.default_profile not in self.profiles:
            raise ConfigError(f"default_profile: {self.default_profile!r} is not one of the profiles "
                              f"({', '.join(sorted(self.profiles))})")

    def profile(self, name: str | None = None) -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r} (profiles: {', '.join(sorted(self.profiles))})")
        return self.profiles[name]


# ----------------------------------------------------------------------------------------------
# The strict builder


def build(cls, raw: Any, where: str = ""):
    """Build dataclass `cls` from a parsed YAML mapping, validating keys, types and checks."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{_join(where, str(key))}: unknown key {key!r} "
                              f"(valid: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        here = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{here}: missing (required)")
            continue
        value = _convert(hints[name], raw[name], here)
        predicate, expected = f.metadata.get("check", (None, None))
        if predicate is not None and not predicate(value):
            raise ConfigError(f"{here}: bad value {_show(raw[name])} (expected {expected})")
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _convert(tp, raw, where):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return raw
    if origin in (Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in options):
            return _build_tagged(options, raw, where)
        return _convert(options[0], raw, where) if len(options) == 1 else _first_match(options, raw, where)
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected one of {', '.join(map(str, args))})")
        return raw
    if tp is Grid:
        return Grid.parse(raw, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, raw, where)
    if origin is tuple:
        items = _sequence(raw, where, expand_scalar=len(args) > 1 and args[1] is not Ellipsis)
        if args and args[-1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) == 1 and len(args) > 1 and len(set(args)) == 1:
            items = items * len(args)  # `size: 256` means [256, 256]
        if len(items) != len(args):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected {len(args)} items)")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
    if origin is list:
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(_sequence(raw, where))]
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in raw.items()}
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected true or false)")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected an integer)")
        return raw
    if tp is float:
        return _number(raw, where)
    if tp is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{where}: bad value {_show(raw)} (expected a string)")
        return str(raw)
    raise TypeError(f"config type {tp!r} not supported")  # a programming error, not user input


def _build_tagged(options, raw, where):
    """A union of sections chosen by their `kind` key (e.g. the source)."""
    kinds = {typing.get_args(typing.get_type_hints(o)["kind"])[0]: o for o in options}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
    if "kind" not in raw:
        raise ConfigError(f"{where}.kind: missing (one of {', '.join(kinds)})")
    if raw["kind"] not in kinds:
        raise ConfigError(f"{where}.kind: bad value {_show(raw['kind'])} (expected one of {', '.join(kinds)})")
    return build(kinds[raw["kind"]], raw, where)


def _first_match(options, raw, where):
    """The value as the first option that accepts it; else one error naming every option."""
    expected = []
    for option in options:
        try:
            return _convert(option, raw, where)
        except ConfigError as e:
            expected.append(str(e).rpartition("(expected ")[2].rstrip(")"))
    raise ConfigError(f"{where}: bad value {_show(raw)} (expected {' or '.join(expected)})")


def _sequence(raw, where, expand_scalar=False):
    if isinstance(raw, list):
        return raw
    if expand_scalar and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [raw]
    raise ConfigError(f"{where}: bad value {_show(raw)} (expected a list)")


def _number(raw, where) -> float:
    try:  # YAML and JSON integers are unbounded: float(2**1100) overflows
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ConfigError(f"{where}: bad value {_show(raw)} (expected a finite number)")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(raw) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------
# Files


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
        size = _expanded_size(data, {})
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if size > MAX_YAML_VALUES:
        how = "endlessly (an alias inside itself)" if size == math.inf else f"to {size:,} values"
        raise ConfigError(f"{path}: expands {how} through YAML aliases (at most {MAX_YAML_VALUES:,} "
                          f"values); is it an alias bomb?")
    return data


def _expanded_size(value, sizes: dict[int, float | None]) -> float:
    """How many values `value` holds once its shared (aliased) parts are copied out: counted
    once per distinct object (memo `sizes`), so a bomb is measured without being walked; inf
    for a structure that contains itself (`&a [*a]`)."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in sizes:
        return math.inf if sizes[id(value)] is None else sizes[id(value)]
    sizes[id(value)] = None  # being counted: meeting it again inside means a cycle
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    sizes[id(value)] = 1 + sum(_expanded_size(v, sizes) for v in items)
    return sizes[id(value)]


def _load(cls, path):
    raw = read_yaml(path)
    try:
        return build(cls, {} if raw is None and cls is ClusterConfig else raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_dataset(path: str | os.PathLike) -> DatasetSpec:
    """Load a dataset.yaml. Relative source paths are resolved against the file's folder."""
    spec = _load(DatasetSpec, path)
    try:
        check_model_section(spec.model)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    source = spec.source
    if hasattr(source, "path") and not os.path.isabs(source.path):
        source = dataclasses.replace(source, path=str((Path(path).parent / source.path).resolve()))
    return dataclasses.replace(spec, source=source)


def check_model_section(section: dict[str, Any]) -> None:
    """ConfigError for a `model:` section with an unknown preset or key or a bad value (what
    depends on the image size, such as stem and upscale factors, is checked when it is built)."""
    from .errors import ModelError
    from .model import DEFAULT_PRESET, PRESETS, ModelConfig  # torch: only where a spec is loaded

    name = section.get("preset", DEFAULT_PRESET)
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    overrides = {k: v for k, v in section.items() if k not in ("preset", "target_cr")}
    try:
        ModelConfig.from_dict({**PRESETS[name].to_dict(), **overrides})
    except ModelError as e:
        raise ConfigError(str(e)) from None


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


def to_dict(obj) -> Any:
    """A config dataclass as plain YAML/JSON data (the inverse of `build`)."""
    if isinstance(obj, Grid):
        return list(obj.values)
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
