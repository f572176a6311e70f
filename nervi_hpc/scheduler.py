"""Executors from cluster.yaml profiles, stage submission and scheduler queries.

On Slurm each stage is its own sbatch job (submitit's SlurmExecutor), chained with `afterok`
dependencies (and `--kill-on-invalid-dep=yes`, so a failed stage cancels the ones after it
instead of leaving them pending forever); `submit` returns once all are queued. On the local
executor a detached driver process (`python -m nervi_hpc.scheduler RUN_DIR PROFILE_NAME
PROFILE_JSON`) runs the stages one after the other through submitit's LocalExecutor, so `submit`
returns at once there too. Either way the jobs record their progress in the run's manifest.

`Slurm` and `Local` answer what the scheduler knows of job ids (its verdict wins over a manifest
that still says running when a job died without recording its end) and cancel jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from . import atomic, manifest
from .config import STAGES, ClusterConfig, Profile, build, load_dataset, to_dict
from .errors import ConfigError, NerviError
from .jobs import STAGE_JOBS
from .manifest import Manifest, RunError
from .paths import RunPaths, StoragePaths

POLL_S = 1.0


class SchedulerError(NerviError, RuntimeError):
    """The scheduler refused or failed a request (sbatch, scancel)."""


# ----------------------------------------------------------------------------------------------
# Resources per stage


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
    """The profile's resources for `stage`: training takes them as given; ingest defaults to one
    task on one node without GPUs, compress to one task with at most one GPU; then the
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
    if stage == "ingest":
        values.update(nodes=1, tasks_per_node=1, gpus_per_node=0)
    elif stage == "compress":
        values.update(nodes=1, tasks_per_node=1, gpus_per_node=min(gpus, 1))
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
        if stage == "compress" and res.tasks > 1:
            raise ConfigError(f"{where}: compress runs as one task, not {res.tasks}")
    if stages["ingest"].tasks > 1 and (profile.executor == "local" or profile.mpi is None):
        raise ConfigError(f"{where}: an ingest of {stages['ingest'].tasks} tasks needs MPI: "
                          + ("the local executor runs it as one task with cpus_per_task worker processes"
                             if profile.executor == "local" else "set `mpi` (srun --mpi=TYPE, e.g. pmix or pmi2)"))
    return stages


def _machine_gpus() -> int:
    import torch

    return torch.cuda.device_count()


# ----------------------------------------------------------------------------------------------
# Executors


def slurm_parameters(profile: Profile, stage: str, res: Resources, job_name: str,
                     dependency: str | None) -> dict:
    """SlurmExecutor parameters (sbatch options) of one stage's job."""
    params = dict(job_name=job_name, partition=res.partition, account=profile.account, qos=res.qos,
                  constraint=res.constraint, nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
                  cpus_per_task=res.cpus_per_task, gpus_per_node=res.gpus_per_node or None,
                  mem=f"{max(1, round(res.mem_gb * 1024))}MB", time=res.time_min,
                  signal_delay_s=profile.signal_delay_s, stderr_to_stdout=True, dependency=dependency,
                  setup=list(res.setup) or None,
                  additional_parameters={"kill-on-invalid-dep": "yes", **profile.sbatch})
    if stage == "ingest" and res.tasks > 1:
        params["srun_args"] = [f"--mpi={profile.mpi}"]
    return {k: v for k, v in params.items() if v is not None}


def local_parameters(profile: Profile, res: Resources) -> dict:
    """LocalExecutor parameters of one stage's job (GPUs 0..n-1 visible, none when n = 0)."""
    params = dict(tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node, timeout_min=res.time_min,
                  signal_delay_s=profile.signal_delay_s, stderr_to_stdout=True)
    if res.setup:
        params["setup"] = list(res.setup)
    return params


def _stage_job(stage: str, paths: RunPaths, res: Resources):
    return STAGE_JOBS[stage](str(paths.root), res.cpus_per_task)


def _job_name(paths: RunPaths, stage: str) -> str:
    return f"{stage}.{paths.root.name}"


# ----------------------------------------------------------------------------------------------
# Submission


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

    from .model import ModelError, count_parameters, model_config
    from .sources import open_source

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

    from .model import NeRVI

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
    train = m.stages["train"].figures
    trained = (train.get("seconds") or 0.0) / 60
    if max_minutes is None and m.state == "done":
        raise RunError(f"{run}: done; to train on give --max-minutes M, the run's total training time "
                       f"(it has trained {trained:.1f} min)")
    if max_minutes is not None and max_minutes <= trained:
        raise RunError(f"{run}: --max-minutes {max_minutes:g} is the run's total training time, and it has "
                       f"trained {trained:.1f} min already; give more")
    if max_minutes is not None and train and not train.get("stopped_early"):
        raise RunError(f"{run}: training ran all its {train.get('epochs')} epochs; more minutes would not "
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
            m.driver = _start_driver(paths, profile_name, profile)
            return todo, None
        return todo, _submit_chain(paths, m, profile, resources, todo)

    todo, refusal = manifest.update(paths, launch)
    if refusal:
        raise SchedulerError(f"{paths.root.name}: {refusal}")
    return todo


def _submit_chain(paths: RunPaths, m: Manifest, profile: Profile, resources: dict[str, Resources],
                  stages: list[str]) -> str | None:
    """sbatch the stages in order, each `afterok` the one before. On a refusal cancel what was
    queued, fail the refused stage and return why; else None."""
    from submitit import SlurmExecutor

    dependency, queued = None, []
    for number, stage in enumerate(stages):
        try:
            executor = SlurmExecutor(folder=paths.jobs, max_num_timeout=profile.max_requeues)
            executor.update_parameters(**slurm_parameters(profile, stage, resources[stage],
                                                          _job_name(paths, stage), dependency))
            job = executor.submit(_stage_job(stage, paths, resources[stage]))
        except (RuntimeError, OSError) as e:  # submitit's FailedJobError/FailedSubmissionError, no sbatch
            lines = str(e).strip().splitlines()
            reason = f"sbatch refused the {stage} job: {lines[-1] if lines else type(e).__name__}"
            Slurm().cancel(queued)
            for earlier in stages[:number]:
                m.cancelled(earlier, reason)
            m.failed(stage, reason)
            return reason
        queued.append(job.job_id)
        m.submitted(stage, job.job_id, resources[stage].tasks)
        dependency = f"afterok:{job.job_id}"
    return None


def _start_driver(paths: RunPaths, profile_name: str, profile: Profile) -> dict:
    """Start the detached local driver; return its {pid, host} for the manifest."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nervi_hpc.scheduler", str(paths.root), profile_name,
               json.dumps(to_dict(profile))]
    with open(paths.driver_log, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # survives the terminal's Ctrl-C
    return {"pid": process.pid, "host": socket.gethostname()}


def drive_local(paths: RunPaths, profile_name: str, profile: Profile) -> None:
    """Run the run's unfinished stages one after the other through submitit's LocalExecutor,
    stopping at the first that does not finish (the driver process's main)."""
    from submitit import LocalExecutor

    resources = plan(profile, profile_name)
    local = Local()
    for stage in STAGES:
        with manifest.locked(paths.manifest_lock):  # the submitter may still be writing it
            current = manifest.read(paths)
        if current.state in ("failed", "cancelled"):
            return
        if current.stages[stage].state == "done":
            continue
        executor = LocalExecutor(folder=paths.jobs, max_num_timeout=profile.max_requeues)
        executor.update_parameters(**local_parameters(profile, resources[stage]))

        def start(m: Manifest) -> object:
            if m.stages[stage].state == "cancelled":
                return None
            job = executor.submit(_stage_job(stage, paths, resources[stage]))
            m.submitted(stage, job.job_id, resources[stage].tasks)
            return job

        job = manifest.update(paths, start)  # under the lock: the job records its start after this
        if job is None:
            return
        print(f"{time.strftime('%H:%M:%S')} {stage}: job {job.job_id}", flush=True)
        while not job.done():
            time.sleep(POLL_S)
        verdicts = local.query([job.job_id])
        manifest.update(paths, lambda m: apply_verdicts(m, verdicts, paths))


# ----------------------------------------------------------------------------------------------
# What the scheduler says


@dataclass(frozen=True)
class Verdict:
    """The scheduler's view of one job: `state` in the manifest's terms (queued, running, done,
    failed, cancelled) or "gone" (the scheduler no longer knows it), and its own words."""

    state: str
    detail: str


SLURM_STATES = {
    "queued": {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD"},
    "running": {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"},
    "done": {"COMPLETED"},
    "cancelled": {"CANCELLED"},
    "failed": {"FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
               "REVOKED", "SPECIAL_EXIT"},
}


class Slurm:
    """Job states from squeue (what slurmctld holds, live and recently ended), then sacct
    (accounting, for older jobs); scancel."""

    def query(self, job_ids: Iterable[str]) -> dict[str, Verdict]:
        ids = sorted({str(j) for j in job_ids})
        if not ids:
            return {}
        found = self._table(["squeue", "-h", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(ids)])
        missing = [j for j in ids if j not in found]
        if missing:
            accounted = self._table(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,Reason,ExitCode",
                                     "-j", ",".join(missing)])
            found.update({j: row for j, row in accounted.items() if j not in found})
        return {j: self._verdict(found[j]) if j in found else Verdict("gone", "unknown to Slurm") for j in ids}

    @staticmethod
    def _table(command: list[str]) -> dict[str, list[str]]:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
        return {row[0]: row[1:] for row in rows if row and "." not in row[0]}

    @staticmethod
    def _verdict(row: list[str]) -> Verdict:
        raw = row[0].split()[0] if row and row[0] else "UNKNOWN"
        state = next((s for s, names in SLURM_STATES.items() if raw in names), "running")
        detail = row[0]
        if len(row) > 1 and row[1] not in ("None", ""):
            detail += f" ({row[1]})"
        if state == "failed" and len(row) > 2 and row[2] not in ("", "0:0"):
            detail += f", exit {row[2]}"
        return Verdict(state, detail)

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = [str(j) for j in job_ids]
        if not ids:
            return
        try:
            out = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SchedulerError(f"scancel {' '.join(ids)}: {e}") from None
        if out.returncode != 0 and "already completing or completed" not in out.stderr:
            raise SchedulerError(f"scancel {' '.join(ids)}: {out.stderr.strip() or out.returncode}")


class Local:
    """Local jobs are processes of this machine: a job id is its submitit controller's pid."""

    def query(self, job_ids: Iterable[str]) -> dict[str, Verdict]:
        return {str(j): (Verdict("running", "process running") if process_alive(int(j), "submitit")
                         else Verdict("gone", "process ended")) for j in job_ids}

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:  # SIGINT: the controller stops its tasks (SIGINT, then SIGKILL)
            if process_alive(int(job_id), "submitit"):
                os.kill(int(job_id), signal.SIGINT)


def process_alive(pid: int, marker: str) -> bool:
    """Whether process `pid` runs (not a zombie) with `marker` in its command line (a pid the
    system gave to some other process since does not count)."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and marker in command


def scheduler_for(m: Manifest) -> Slurm | Local | None:
    """The scheduler that knows the run's jobs from here: Slurm, or Local on the machine that
    runs the local driver (None elsewhere: another machine's processes cannot be seen)."""
    if m.executor == "slurm":
        return Slurm()
    if m.driver is None or m.driver.get("host") == socket.gethostname():
        return Local()
    return None


def apply_verdicts(m: Manifest, verdicts: dict[str, Verdict], paths: RunPaths) -> bool:
    """Let the scheduler's verdict win over stages the manifest still calls queued/running:
    a job that ended without recording its end failed (or was cancelled); a local run whose
    driver is gone with stages never submitted failed. Returns whether anything changed."""
    changed = False
    for stage, record in m.stages.items():
        if record.terminal or record.job_id is None or record.job_id not in verdicts:
            continue
        verdict = verdicts[record.job_id]
        if verdict.state in ("queued", "running"):
            continue
        if verdict.state == "cancelled":
            m.cancelled(stage, verdict.detail)
        else:
            what = "ended without recording a result" if verdict.state in ("done", "gone") else "died"
            m.failed(stage, f"job {record.job_id} {what}: {verdict.detail}{_last_log_line(paths, record.job_id)}")
        changed = True
    if (m.executor == "local" and m.driver is not None and not m.terminal
            and m.driver.get("host") == socket.gethostname()
            and not any(s.state in ("queued", "running") for s in m.stages.values())
            and not process_alive(int(m.driver["pid"]), "nervi_hpc.scheduler")):
        stage = m.active_stage
        m.failed(stage, f"the local driver (pid {m.driver['pid']}) ended before starting {stage}; "
                        f"see {paths.driver_log}")
        changed = True
    return changed


def _last_log_line(paths: RunPaths, job_id: str) -> str:
    try:
        lines = [line for line in paths.job_log(job_id).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f"; log: {lines[-1].strip()[:200]}" if lines else ""


def refresh(runs: list[RunPaths]) -> list[tuple[Manifest, dict[str, Verdict]]]:
    """Each run's manifest after applying the scheduler's verdicts (written back where they
    changed it), with the verdicts on its live jobs. One query per scheduler for all runs."""
    manifests = [manifest.read(paths) for paths in runs]
    wanted: dict[type, set[str]] = {}
    for m in manifests:
        scheduler = scheduler_for(m)
        if scheduler is not None and not m.terminal:
            wanted.setdefault(type(scheduler), set()).update(
                s.job_id for s in m.stages.values() if not s.terminal and s.job_id)
    answers = {kind: kind().query(ids) for kind, ids in wanted.items()}
    refreshed = []
    for paths, m in zip(runs, manifests):
        scheduler = scheduler_for(m)
        verdicts = answers.get(type(scheduler), {}) if scheduler is not None and not m.terminal else {}
        if apply_verdicts(m, verdicts, paths):
            m = manifest.update(paths, functools.partial(_applied, verdicts=verdicts, paths=paths))
        refreshed.append((m, verdicts))
    return refreshed


def _applied(m: Manifest, verdicts: dict[str, Verdict], paths: RunPaths) -> Manifest:
    apply_verdicts(m, verdicts, paths)
    return m


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
    scheduler = scheduler_for(m)
    if scheduler is None:
        raise SchedulerError(f"{paths.root.name}: its local jobs run on {m.driver['host']}; cancel it there")
    jobs = manifest.update(paths, mark)
    if m.executor == "local" and m.driver and process_alive(int(m.driver["pid"]), "nervi_hpc.scheduler"):
        os.kill(int(m.driver["pid"]), signal.SIGTERM)
    scheduler.cancel(jobs)
    return manifest.read(paths)


# ----------------------------------------------------------------------------------------------
# Dry run


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
            params = slurm_parameters(profile, stage, res, _job_name(paths, stage), dependency)
            parts.append(_make_sbatch_string(command=command, folder=str(paths.jobs), **params).rstrip())
        else:
            after = f", after {STAGES[number - 1]} is done" if number else ""
            gpus = ",".join(map(str, range(res.gpus_per_node)))
            parts.append(f"# local job{after}: {res.tasks_per_node} task(s), CUDA_VISIBLE_DEVICES='{gpus}'\n"
                         + "\n".join([*res.setup, command]))
    return "\n".join(parts) + "\n"


def _main(argv: list[str]) -> None:
    """The local driver: `python -m nervi_hpc.scheduler RUN_DIR PROFILE_NAME PROFILE_JSON`."""
    run_dir, profile_name, profile_json = argv
    drive_local(RunPaths(Path(run_dir)), profile_name, build(Profile, json.loads(profile_json), "profile"))


if __name__ == "__main__":
    _main(sys.argv[1:])
