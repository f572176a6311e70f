"""A run's life from the command line: `submit` a dataset.yaml (checked first: `preflight`),
`resume` one that ended, `cancel` one, or `dry_run` to see what would be sent. The stages are
queued on the profile's backend (nervi_hpc.hpc.backends); the jobs record their progress in the
run's manifest."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import atomic
from ..config import ClusterConfig, Profile, load_dataset
from ..pipeline import STAGES
from ..errors import NerviError, RunError, SchedulerError
from ..paths import RunPaths, StoragePaths
from ..schema import to_dict
from . import manifest
from .backends import backend_for
from .backends.base import process_alive
from .backends.local import DRIVER_MODULE, start_driver
from .backends.slurm import job_name, slurm_parameters, submit_chain
from .manifest import Manifest
from .resources import Resources, plan


@dataclass
class Submission:
    """What `submit` did: the run, whether it is new, the stages it queued now, and what the
    check of the spec found (`preflight`)."""

    paths: RunPaths
    manifest: Manifest
    created: bool
    launched: list[str]
    checked: str = ""

    def summary(self) -> str:
        run = self.paths.root.name
        if not self.launched:
            return f"{run}: already submitted ({self.manifest.state}); --new starts another run"
        verb = "submitted" if self.created else "resubmitted"
        jobs = ", ".join(f"{s} {self.manifest.stages[s].job_id}" for s in self.launched
                         if self.manifest.stages[s].job_id)
        where = f"jobs {jobs}" if jobs else "the local driver runs them in order"
        return f"{run}: {verb} {', '.join(self.launched)} on {self.manifest.profile} ({where}) → {self.paths.root}"


def submit(spec_path: str | os.PathLike, cluster: ClusterConfig, profile_name: str | None = None, *,
           new: bool = False) -> Submission:
    """Submit a dataset.yaml. Unless `new`, the same spec again returns its newest run that is
    live or done, else resubmits the unfinished stages of its newest failed or cancelled run
    (they resume from what is on disk). Submissions of one spec are serialised by a lock, so
    concurrent submits never make two runs or mix their jobs."""
    spec, profile_name, profile, resources, digest, storage, key, checked = _request(spec_path, cluster, profile_name)
    with manifest.locked(storage.submit_lock(key)):
        runs = [] if new else _runs_of(storage, key, digest)
        live = [(paths, m) for paths, m in runs if m.state not in ("failed", "cancelled")]
        if live:
            return Submission(live[-1][0], live[-1][1], created=False, launched=[], checked=checked)
        if runs:
            paths, created = runs[-1][0], False
        else:
            paths, created = _create_run(storage, key, spec, digest, profile_name, profile), True
        launched = _launch(paths, profile_name, profile, resources)
        return Submission(paths, manifest.read(paths), created, launched, checked)


def _request(spec_path, cluster: ClusterConfig, profile_name: str | None):
    """What a submission is about: spec, profile (name, settings, per-stage resources), the spec's
    digest, the storage, and the run-id key `<name>-<digest[:8]>`. The source is opened and the
    model sized first (`preflight`), so a bad path or budget fails here, not in a queued job."""
    spec = load_dataset(spec_path)
    profile_name = profile_name or cluster.default_profile
    profile = cluster.profile(profile_name)
    resources = plan(profile, profile_name)
    checked = preflight(spec, spec_path)
    digest = manifest.spec_digest(spec)
    return (spec, profile_name, profile, resources, digest,
            StoragePaths(Path(cluster.storage_root).resolve()), f"{spec.name}-{digest[:8]}", checked)


def preflight(spec, spec_path) -> str:
    """Open the spec's source (its listing and first image) and size its model as the train job
    will; return one line saying what will be trained. A source that cannot be read or a
    `target_cr` no model fits raises, naming the spec (and for the budget, a value that fits)."""
    import numpy as np

    from ..data.sources import open_source
    from ..errors import ModelError
    from ..model.network import count_parameters
    from ..model.sizing import model_config

    try:
        source = open_source(spec.source)
    except NerviError as e:
        raise type(e)(f"{spec_path}: source: {e}") from None
    height, width = source.size
    grids = {name: np.unique(source.params[:, j]).tolist() for j, name in enumerate(source.names)}

    try:
        mcfg = model_config(spec.model, height, width, count=len(source), grids=grids)
    except ModelError as e:  # a target_cr out of reach names one that fits (model.sized_for)
        raise ModelError(f"{spec_path}: {e}") from None
    import torch

    from ..model.network import NeRVI

    with torch.device("meta"):
        parameters = count_parameters(NeRVI(mcfg, height, width, len(source.names)))
    return (f"{spec_path}: {len(source)} images of {width}×{height} ({source.description}); "
            f"model c1={mcfg.c1} c2={mcfg.c2}, {parameters:,} parameters")


def _runs_of(storage: StoragePaths, key: str, digest: str) -> list[tuple[RunPaths, Manifest]]:
    """The runs of this spec, oldest first."""
    found = []
    for run_id in manifest.run_ids(storage):
        if run_id == key or run_id.startswith(f"{key}-"):
            paths = storage.run(run_id)
            m = manifest.read(paths)
            if m.spec_sha256 == digest:
                found.append((paths, m))
    return found


def _create_run(storage: StoragePaths, key: str, spec, digest: str, profile_name: str,
                profile: Profile) -> RunPaths:
    """A fresh run folder: the resolved spec (absolute source paths) and a manifest."""
    number = 1
    run_id = key
    while storage.run(run_id).root.exists():
        number += 1
        run_id = f"{key}-{number}"
    paths = storage.run(run_id)
    paths.root.mkdir(parents=True)
    atomic.write_text(paths.spec, yaml.safe_dump(to_dict(spec), sort_keys=False))
    manifest.write(paths, Manifest(run_id=run_id, name=spec.name, spec_sha256=digest, profile=profile_name,
                                   executor=profile.executor, created=time.time()))
    return paths


def resume(paths: RunPaths, cluster: ClusterConfig, max_minutes: float | None = None) -> Submission:
    """Continue a run that ended: queue its unfinished stages again (they resume from what is on
    disk); with `max_minutes`, the run's new total training budget, train on and compress again."""
    m = manifest.read(paths)
    run = paths.root.name
    if not m.terminal:
        raise RunError(f"{run}: {m.state}; it is still going (nervi-hpc watch {run})")
    train = m.trained
    trained = ((train.seconds if train else None) or 0.0) / 60
    if max_minutes is None and m.state == "done":
        raise RunError(f"{run}: done; to train on give --max-minutes M, the run's total training time "
                       f"(it has trained {trained:.1f} min)")
    if max_minutes is not None and max_minutes <= trained:
        raise RunError(f"{run}: --max-minutes {max_minutes:g} is the run's total training time, and it has "
                       f"trained {trained:.1f} min already; give more")
    if max_minutes is not None and train and not train.stopped_early:
        raise RunError(f"{run}: training ran all its {train.epochs} epochs; more minutes would not "
                       f"change it (submit a spec with more train.epochs)")
    profile = cluster.profile(m.profile)
    redo = ("train", "compress") if max_minutes is not None else ()
    launched = _launch(paths, m.profile, profile, plan(profile, m.profile), redo=redo, train_minutes=max_minutes)
    return Submission(paths, manifest.read(paths), created=False, launched=launched)


def _launch(paths: RunPaths, profile_name: str, profile: Profile, resources: dict[str, Resources], *,
            redo: tuple[str, ...] = (), train_minutes: float | None = None) -> list[str]:
    """Queue every stage not done yet, and those in `redo` (Slurm: chained jobs; local: the
    driver). A refused submission fails the run with sbatch's reason (so the same spec can be
    submitted again)."""

    def launch(m: Manifest) -> tuple[list[str], str | None]:
        todo = [s for s in STAGES if m.stages[s].state != "done" or s in redo]
        if train_minutes is not None:
            m.train_minutes = train_minutes
        m.profile, m.executor = profile_name, profile.executor
        for stage in todo:
            m.stages[stage] = manifest.StageState()
        if profile.executor == "local":
            m.driver = start_driver(paths, profile_name, profile)
            return todo, None
        return todo, submit_chain(paths, m, profile, resources, todo)

    todo, refusal = manifest.update(paths, launch)
    if refusal:
        raise SchedulerError(f"{paths.root.name}: {refusal}")
    return todo


def cancel(paths: RunPaths) -> Manifest:
    """Cancel every stage not finished: mark them cancelled, then stop their jobs (and the
    local driver first, so it starts nothing more)."""

    def mark(m: Manifest) -> list[str]:
        live = [s.job_id for s in m.stages.values() if not s.terminal and s.job_id]
        for stage in STAGES:
            m.cancelled(stage, "cancelled by the user")
        return live

    m = manifest.read(paths)
    if m.terminal:
        raise RunError(f"{paths.root.name}: already {m.state}; nothing to cancel")
    scheduler = backend_for(m)
    if scheduler is None:
        raise SchedulerError(f"{paths.root.name}: its local jobs run on {m.driver['host']}; cancel it there")
    jobs = manifest.update(paths, mark)
    if m.executor == "local" and m.driver and process_alive(int(m.driver["pid"]), DRIVER_MODULE):
        os.kill(int(m.driver["pid"]), signal.SIGTERM)
    scheduler.cancel(jobs)
    return manifest.read(paths)


def dry_run(spec_path: str | os.PathLike, cluster: ClusterConfig, profile_name: str | None = None) -> str:
    """What `submit` would send, without creating or submitting anything: the sbatch script of
    each stage (Slurm), or each stage's local job."""
    from submitit.slurm.slurm import _make_sbatch_string

    _, profile_name, profile, resources, _, storage, key, checked = _request(spec_path, cluster, profile_name)
    paths = storage.run(key)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(paths.jobs))}"
    parts = [f"# {spec_path}: run {paths.root.name} on profile {profile_name!r} ({profile.executor})",
             f"# checked {checked}"]
    for number, stage in enumerate(STAGES):
        res = resources[stage]
        parts.append(f"\n# ---- {stage}: {res.describe()}")
        if profile.executor == "slurm":
            dependency = f"afterok:<{STAGES[number - 1]} job id>" if number else None
            params = slurm_parameters(profile, stage, res, job_name(paths, stage), dependency)
            parts.append(_make_sbatch_string(command=command, folder=str(paths.jobs), **params).rstrip())
        else:
            after = f", after {STAGES[number - 1]} is done" if number else ""
            gpus = ",".join(map(str, range(res.gpus_per_node)))
            parts.append(f"# local job{after}: {res.tasks_per_node} task(s), CUDA_VISIBLE_DEVICES='{gpus}'\n"
                         + "\n".join([*res.setup, command]))
    return "\n".join(parts) + "\n"
