"""Training checkpoints: `checkpoints/step-NNNNNN/` with state.pt, config.json and a DONE marker.

Rank 0 writes a checkpoint into a temporary sibling folder, writes DONE last, then renames it into
place; a folder without DONE (a crash mid-write) is never picked up. `latest` finds the newest
complete step; `load` reads it with `weights_only=True`, so a checkpoint cannot run code.
config.json is a `CheckpointRecord`: what the weights are and what they were trained on.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from .config import ModelConfig
from .spec import ModelSpec

STEP_DIR = re.compile(r"^step-(\d{6,})$")
DONE = "DONE"


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint's config.json, written by training and read by compress (and the bench)."""

    dataset: dict[str, Any]                 # the run's dataset.yaml as trained (schema.to_dict)
    model: ModelConfig                      # the network, resolved for the images
    batch_size: int
    world_size: int
    height: int
    width: int
    param_names: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]  # each parameter's (low, high) in the store
    background: tuple[int, int, int]
    stopped_early: bool = False             # training ended at its time limit
    peak_lr: float | None = None            # train.lr resolved (`auto` depends on the width); None if older

    @property
    def name(self) -> str | None:
        return self.dataset.get("name")

    @property
    def epochs_planned(self) -> int | None:
        return self.dataset.get("train", {}).get("epochs")

    @property
    def model_spec(self) -> ModelSpec:
        """The dataset.yaml's `model:` section (preset, overrides, target_cr, bits)."""
        return ModelSpec.parse(self.dataset.get("model", {}))

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "model": self.model.to_dict(), "batch_size": self.batch_size,
                "world_size": self.world_size, "height": self.height, "width": self.width,
                "param_names": list(self.param_names), "ranges": [list(r) for r in self.ranges],
                "background": list(self.background), "stopped_early": self.stopped_early,
                "peak_lr": self.peak_lr}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "CheckpointRecord":
        return cls(dataset=raw["dataset"], model=ModelConfig.from_dict(raw["model"]), batch_size=raw["batch_size"],
                   world_size=raw["world_size"], height=raw["height"], width=raw["width"],
                   param_names=tuple(raw["param_names"]), ranges=tuple(tuple(r) for r in raw["ranges"]),
                   background=tuple(raw["background"]), stopped_early=bool(raw.get("stopped_early", False)),
                   peak_lr=raw.get("peak_lr"))


def save(root: str | Path, step: int, state: dict, record: CheckpointRecord, keep_latest_k: int = 2) -> Path:
    """Write checkpoint `step` (tensors and plain data in `state`, its record); prune old ones."""
    final = Path(root) / f"step-{step:06d}"
    with atomic.atomic_path(final, directory=True) as tmp:
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(record.to_json(), indent=2, sort_keys=True))
        (tmp / DONE).write_text(f"{step}\n")
    prune(root, keep_latest_k)
    return final


def complete_steps(root: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / DONE).is_file() and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    steps = complete_steps(root)
    return steps[-1] if steps else None


def load(path: str | Path, map_location="cpu") -> tuple[dict, CheckpointRecord]:
    """(state, record) of a checkpoint folder."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    return state, CheckpointRecord.from_json(json.loads((path / "config.json").read_text()))


def prune(root: str | Path, keep_latest_k: int) -> None:
    """Keep the newest `keep_latest_k` complete checkpoints; drop older ones and crash leftovers."""
    root = Path(root)
    for old in complete_steps(root)[:-keep_latest_k] if keep_latest_k > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
