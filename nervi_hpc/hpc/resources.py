"""What each stage's job asks of the scheduler: a cluster.yaml profile resolved per stage, and
checked against what each executor and stage can do."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Profile
from ..errors import ConfigError
from ..pipeline import BY_NAME, STAGES


@dataclass(frozen=True)
class Resources:
    """What one stage's job asks for."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: float
    time_min: int
    partition: str | None
    qos: str | None
    constraint: str | None
    setup: tuple[str, ...] = ()

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        gpus = f", {self.gpus_per_node} GPU/node" if self.gpus_per_node else ""
        return (f"{self.nodes} node(s) × {self.tasks_per_node} task(s), {self.cpus_per_task} CPU/task{gpus}, "
                f"{self.mem_gb:g} GB, {self.time_min} min")


def stage_resources(profile: Profile, stage: str, machine_gpus: int = 0) -> Resources:
    """The profile's resources for `stage`, as its registry entry (nervi_hpc.pipeline) says:
    training takes them as given, ingest defaults to one task on one node without GPUs, compress
    to one task with at most one GPU; then the
    profile's `stages.<stage>` overrides apply: a stage on another partition drops the
    profile's constraint, and a stage's `setup` replaces the profile's. `machine_gpus`
    resolves `gpus_per_node: auto`: training then runs one DDP task per GPU (one task without)."""
    auto = profile.gpus_per_node == "auto"
    gpus = machine_gpus if auto else profile.gpus_per_node
    tasks = max(1, gpus) if auto else profile.tasks_per_node
    values = dict(nodes=profile.nodes, tasks_per_node=tasks, cpus_per_task=profile.cpus_per_task,
                  gpus_per_node=gpus, mem_gb=profile.mem_gb, time_min=profile.time_min,
                  partition=profile.partition, qos=profile.qos, constraint=profile.constraint,
                  setup=tuple(profile.setup))
    defaults = BY_NAME[stage]
    if defaults.tasks == "one":
        values.update(nodes=1, tasks_per_node=1)
    if defaults.max_gpus is not None:
        values.update(gpus_per_node=min(gpus, defaults.max_gpus))
    overrides = profile.stages.get(stage)
    if overrides is not None:
        given = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
        if given.get("partition", profile.partition) != profile.partition:
            values["constraint"] = None
        values.update(given)
        values["setup"] = tuple(values["setup"])
    return Resources(**values)


def plan(profile: Profile, profile_name: str) -> dict[str, Resources]:
    """Every stage's resources, checked against what each executor and stage can do."""
    where = f"cluster.yaml profile {profile_name!r}"
    machine_gpus = _machine_gpus() if profile.gpus_per_node == "auto" else 0
    stages = {stage: stage_resources(profile, stage, machine_gpus) for stage in STAGES}
    for stage, res in stages.items():
        if profile.executor == "local" and res.nodes > 1:
            raise ConfigError(f"{where}: the local executor runs on this machine only ({stage} asks for "
                              f"{res.nodes} nodes)")
        parallel = BY_NAME[stage].parallel
        if parallel is None and res.tasks > 1:
            raise ConfigError(f"{where}: {stage} runs as one task, not {res.tasks}")
        if parallel == "mpi" and res.tasks > 1 and (profile.executor == "local" or profile.mpi is None):
            raise ConfigError(f"{where}: an {stage} of {res.tasks} tasks needs MPI: "
                              + ("the local executor runs it as one task with cpus_per_task worker processes"
                                 if profile.executor == "local" else "set `mpi` (srun --mpi=TYPE, e.g. pmix or pmi2)"))
    return stages


def _machine_gpus() -> int:
    import torch

    return torch.cuda.device_count()
