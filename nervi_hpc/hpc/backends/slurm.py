"""The Slurm backend: each stage its own sbatch job (submitit's SlurmExecutor), chained with
`afterok` dependencies (and `--kill-on-invalid-dep=yes`, so a failed stage cancels the ones after
it instead of leaving them pending forever); job states from squeue, then sacct; scancel."""

from __future__ import annotations

import subprocess
from typing import Iterable

from ...config import Profile
from ...errors import SchedulerError
from ...paths import RunPaths
from ...pipeline import BY_NAME
from ..jobs import job_for
from ..manifest import Manifest
from ..resources import Resources
from .base import Backend, Verdict


SLURM_STATES = {
    "queued": {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD"},
    "running": {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"},
    "done": {"COMPLETED"},
    "cancelled": {"CANCELLED"},
    "failed": {"FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
               "REVOKED", "SPECIAL_EXIT"},
}


class Slurm(Backend):
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
    if BY_NAME[stage].parallel == "mpi" and res.tasks > 1:  # ranks over shards, started by srun
        params["srun_args"] = [f"--mpi={profile.mpi}"]
    return {k: v for k, v in params.items() if v is not None}


def job_name(paths: RunPaths, stage: str) -> str:
    return f"{stage}.{paths.root.name}"


def submit_chain(paths: RunPaths, m: Manifest, profile: Profile, resources: dict[str, Resources],
                  stages: list[str]) -> str | None:
    """sbatch the stages in order, each `afterok` the one before. On a refusal cancel what was
    queued, fail the refused stage and return why; else None."""
    from submitit import SlurmExecutor

    dependency, queued = None, []
    for number, stage in enumerate(stages):
        try:
            executor = SlurmExecutor(folder=paths.jobs, max_num_timeout=profile.max_requeues)
            executor.update_parameters(**slurm_parameters(profile, stage, resources[stage],
                                                          job_name(paths, stage), dependency))
            job = executor.submit(job_for(stage, paths, resources[stage]))
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
