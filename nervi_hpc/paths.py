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
