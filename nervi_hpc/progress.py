"""Progress where people look: rich bars on the terminal for interactive work (`progress_bar`,
`TrainingBar`);
for a stage's job a line in the log at intervals (what `tail -f` of a Slurm `.out` shows) and
the same figures in `logs/progress-<stage>.json` for `nervi-hpc watch` (`ProgressLog`)."""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

from . import atomic
from .units import human_bytes, human_duration

INTERVAL_ENV = "NERVI_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0


def memory_bytes() -> dict[str, int]:
    """Peak resident memory of this process and, once CUDA is in use, peak GPU memory."""
    figures = {"rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return figures


def describe(record: dict) -> str:
    """One line of a progress record's figures: the step, images or epoch, loss, PSNR, rate, time,
    host, memory."""
    parts = [record["step"]] if isinstance(record.get("step"), str) else []
    if "images" in record:
        parts.append(f"{record['images']}/{record['total']} images")
    if "epoch" in record:
        parts.append(f"epoch {record['epoch']}/{record['epochs']}")
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    if record.get("psnr") is not None:
        parts.append(f"PSNR {record['psnr']:.2f} dB")
    if record.get("images_per_s"):
        parts.append(f"{record['images_per_s']:.1f} img/s")
    if record.get("elapsed_s") is not None:
        budget = record.get("budget_s")
        parts.append(human_duration(record["elapsed_s"]) + (f" of {human_duration(budget)}" if budget else ""))
    if record.get("eta_s") is not None:
        parts.append(f"ETA {human_duration(record['eta_s'])}")
    return " · ".join(parts + [where(record)])


def where(record: dict) -> str:
    """`node12 (RSS 1.2 GB, GPU 30.1 GB)`: the host of a progress record and its peak memory."""
    memory = [f"RSS {human_bytes(record['rss_bytes'])}"] if "rss_bytes" in record else []
    if "gpu_bytes" in record:
        memory.append(f"GPU {human_bytes(record['gpu_bytes'])}")
    return record.get("host", "?") + (f" ({', '.join(memory)})" if memory else "")


class ProgressLog:
    """Report a stage's figures at most every NERVI_PROGRESS_S seconds (default 30): one line
    to stdout and the record at `record` (atomically). A disabled log does nothing."""

    def __init__(self, stage: str, record: Path | None, enabled: bool = True):
        self.stage, self.record, self.enabled = stage, record, enabled
        self.interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
        self.last = float("-inf")

    def __call__(self, **figures) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        record = {"stage": self.stage, "time": time.time(), "host": socket.gethostname(),
                  **{k: v for k, v in figures.items() if v is None or v == v}, **memory_bytes()}  # NaN → left out
        print(f"{time.strftime('%H:%M:%S')} [nervi-hpc] {self.stage}: {describe(record)}", flush=True)
        if self.record is not None:
            atomic.write_text(self.record, json.dumps(record) + "\n")


def read(path: Path, since: float | None = None) -> dict | None:
    """The progress record at `path`, unless missing, unreadable or older than `since`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or (since is not None and record.get("time", 0) < since):
        return None
    return record


def progress_bar(enabled: bool, rate: bool = False):
    """A rich progress bar on stderr (images done of total, time left; with `rate` also images/s
    and the time so far); disabled when not `enabled`."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} img/s" if task.speed else "… img/s", style="progress.data.speed")

    timing = [RateColumn(), TimeElapsedColumn()] if rate else []
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *timing,
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


class TrainingBar:
    """Training's rich bar (rank 0): the share of the epochs or of the time budget done, whichever is
    larger (the run ends at the first of the two), epoch, loss, PSNR, img/s, time, ETA (a no-op
    when disabled)."""

    def __init__(self, enabled: bool, epochs: int, done: int):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.description}"))
            self.task = self.progress.add_task("", total=1.0, completed=done / epochs)
            self.progress.start()

    def update(self, epoch, epochs, loss, psnr_db, rate, eta, elapsed_s, budget_s):
        if self.progress:
            share = max(epoch / epochs, elapsed_s / budget_s if budget_s else 0.0)
            spent = human_duration(elapsed_s) + (f" of {human_duration(budget_s)}" if budget_s else "")
            self.progress.update(self.task, completed=min(share, 1.0), description=(
                f"epoch {epoch}/{epochs} · loss {loss:.4f} · PSNR {psnr_db:.2f} dB · {rate:.1f} img/s · "
                f"{spent} · ETA {human_duration(eta) if eta == eta else '?'}"))

    def close(self):
        if self.progress:
            self.progress.stop()
