"""The storage layout: the only module that knows where things live in a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Everything one run writes, under storage_root/runs/<run-id>/."""

    root: Path

    @classmethod
    def of(cls, storage_root: str | Path, run_id: str) -> "RunPaths":
        return cls(Path(storage_root) / "runs" / run_id)

    @property
    def spec(self) -> Path:
        return self.root / "dataset.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def store(self) -> Path:
        return self.root / "renders.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        """Weights kept at the training times `train.snapshot_minutes` names (PSNR-vs-time curves)."""
        return self.root / "snapshots"

    @property
    def metrics(self) -> Path:
        return self.root / "logs" / "metrics.jsonl"

    @property
    def archive_dir(self) -> Path:
        return self.root / "archive"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def progress(self, stage: str) -> Path:
        """The newest progress record of `stage`'s job (nervi_hpc.progress)."""
        return self.logs / f"progress-{stage}.json"

    @property
    def manifest_lock(self) -> Path:
        return self.root / ".manifest.lock"

    @property
    def jobs(self) -> Path:
        """submitit's folder: each job's pickles and its tasks' logs `<job-id>_<task>_log.out`."""
        return self.root / "jobs"

    @property
    def driver_log(self) -> Path:
        """Output of the local driver process that runs the stages one after the other."""
        return self.logs / "driver.log"

    def job_log(self, job_id: str, task: int = 0) -> Path:
        return self.jobs / f"{job_id}_{task}_log.out"


@dataclass(frozen=True)
class StoragePaths:
    """storage_root: runs/<run-id>/ folders and the locks that serialise submissions."""

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.runs / run_id)

    def submit_lock(self, key: str) -> Path:
        return self.runs / ".locks" / f"{key}.lock"
