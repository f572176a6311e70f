"""Training checkpoints: `checkpoints/step-NNNNNN/` with state.pt, config.json and a DONE marker.

Rank 0 writes a checkpoint into a temporary sibling folder, writes DONE last, then renames it into
place; a folder without DONE (a crash mid-write) is never picked up. `latest` finds the newest
complete step; `load` reads it with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from .. import atomic

STEP_DIR = re.compile(r"^step-(\d{6,})$")
DONE = "DONE"


def save(root: str | Path, step: int, state: dict, config: dict, keep_latest_k: int = 2) -> Path:
    """Write checkpoint `step` (tensors and plain data in `state`, JSON `config`); prune old ones."""
    final = Path(root) / f"step-{step:06d}"
    with atomic.atomic_path(final, directory=True) as tmp:
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
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


def load(path: str | Path, map_location="cpu") -> tuple[dict, dict]:
    """(state, config) of a checkpoint folder."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    return state, json.loads((path / "config.json").read_text())


def prune(root: str | Path, keep_latest_k: int) -> None:
    """Keep the newest `keep_latest_k` complete checkpoints; drop older ones and crash leftovers."""
    root = Path(root)
    for old in complete_steps(root)[:-keep_latest_k] if keep_latest_k > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
