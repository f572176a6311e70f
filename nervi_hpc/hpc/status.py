"""What a run is doing, read from storage (manifest, training metrics, progress records) and the
scheduler (its logs and results: results.py).

`snapshot(runs)` refreshes the runs against the scheduler (its verdict wins over a manifest
that still says running) and returns `RunView`s. A RunView renders (rich `__rich__`) as the
table of its stages; `runs_table` renders many runs as one table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .. import progress
from ..config import load_dataset
from ..errors import ConfigError
from ..paths import RunPaths, StoragePaths
from ..pipeline import BY_NAME, STAGES
from ..units import finite_or_none, human_bytes, human_duration, number_or_none
from . import manifest
from .backends.base import Verdict
from .manifest import Manifest
from .reconcile import refresh

STATE_STYLES = {"pending": "dim", "queued": "yellow", "running": "bold cyan", "done": "green",
                "failed": "bold red", "cancelled": "magenta"}
METRICS_TAIL_BYTES = 16384


@dataclass(frozen=True)
class Training:
    """The newest line of the training metrics log."""

    epoch: int
    epochs: int
    loss: float | None
    psnr: float | None
    images_per_s: float | None
    eta_s: float | None
    elapsed_s: float | None
    budget_s: float | None  # the spec's max_minutes, when training is time-bound

    @property
    def fraction(self) -> float:
        """How far training is: by epochs, or by the time budget when that ends it sooner."""
        by_epochs = self.epoch / self.epochs if self.epochs else 0.0
        by_time = self.elapsed_s / self.budget_s if self.budget_s and self.elapsed_s else 0.0
        return min(max(by_epochs, by_time), 1.0)


def training_progress(paths: RunPaths, budget_minutes: float | None = None) -> Training | None:
    """The last epoch record of logs/metrics.jsonl, with the ETA capped by the time budget
    (`budget_minutes`, else the spec's max_minutes); None before the first epoch."""
    try:
        with open(paths.metrics, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - METRICS_TAIL_BYTES, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a partial first line of the tail, or a line being written
            continue
        if isinstance(record, dict) and "epochs" in record and "epoch" in record:
            records.append(record)
    if not records:
        return None
    last = records[-1]
    budget = 60 * budget_minutes if budget_minutes is not None else _budget_s(paths)
    eta, elapsed = finite_or_none(last.get("eta_s")), finite_or_none(last.get("elapsed_s"))
    if budget is not None and elapsed is not None:
        left = max(budget - elapsed, 0.0)
        eta = left if eta is None else min(eta, left)
    return Training(int(last["epoch"]), int(last["epochs"]), finite_or_none(last.get("loss")), number_or_none(last.get("psnr")),
                    finite_or_none(last.get("images_per_s")), eta, elapsed, budget)


def _budget_s(paths: RunPaths) -> float | None:
    try:
        minutes = load_dataset(paths.spec).train.max_minutes
    except ConfigError:
        return None
    return None if minutes is None else 60 * minutes


# ----------------------------------------------------------------------------------------------
# Views


@dataclass
class RunView:
    """One run as the user sees it: manifest, the scheduler's words on its live jobs, training."""

    paths: RunPaths
    manifest: Manifest
    verdicts: dict[str, Verdict]
    training: Training | None

    @property
    def run_id(self) -> str:
        return self.paths.root.name

    def scheduler_says(self, stage: str) -> str:
        record = self.manifest.stages[stage]
        verdict = self.verdicts.get(record.job_id or "")
        return verdict.detail if verdict is not None and not record.terminal else ""

    def progress(self, stage: str) -> dict | None:
        """The running stage's newest progress record from this run of it (none older)."""
        record = self.manifest.stages[stage]
        if record.state != "running":
            return None
        return progress.read(self.paths.progress(stage), since=record.started)

    def details(self, stage: str) -> str:
        """A stage's key figures: images and shards; epoch, loss, PSNR, ETA; archive size, CR, PSNR."""
        record, kind = self.manifest.stages[stage], BY_NAME[stage]
        if record.state == "failed" or record.state == "cancelled":
            return record.reason or ""
        now = self.progress(stage)
        if kind.progress_line is not None and now and "images" in now:
            return kind.progress_line(now)
        if kind.progress_line is None and (record.state == "running" or record.figures):
            return self.training_line(record.state == "running") or (record.figures.line() if record.figures else "starting")
        return record.figures.line() if record.figures else ""

    def training_line(self, running: bool) -> str:
        """Epoch, loss and PSNR from the training metrics (with the ETA while it runs); empty before any."""
        t = self.training
        if t is None:
            return ""
        eta = f" · ETA {human_duration(t.eta_s)}" if running and t.eta_s is not None else ""
        return f"epoch {t.epoch}/{t.epochs} · loss {_show(t.loss, '.4f')} · PSNR {_show(t.psnr, '.2f')} dB{eta}"

    def stage_table(self) -> Table:
        m = self.manifest
        title = Text.assemble(f"{self.run_id} · ", styled_state(m.state), f" · profile {m.profile} ({m.executor})")
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=False)
        for column in ("stage", "job", "state", "time"):
            table.add_column(column, no_wrap=True)
        table.add_column("details", overflow="fold", min_width=24)
        for stage in STAGES:
            record = m.stages[stage]
            state = styled_state(record.state)
            if record.restarts:
                state.append(f" ({record.restarts} restart{'s' * (record.restarts > 1)})", style="yellow")
            if self.scheduler_says(stage):
                state.append(f"\n{self.scheduler_says(stage)}", style="dim")
            table.add_row(stage, record.job_id or "—", state, human_duration(_elapsed(record.started, record.ended)),
                          self.details(stage))
        return table

    @property
    def warnings(self) -> list[str]:
        return self.manifest.warnings

    def __rich__(self):
        parts = [self.stage_table()]
        if self.manifest.reason:
            parts.append(Text(f"{self.manifest.state}: {self.manifest.reason}", style=STATE_STYLES[self.manifest.state]))
        parts += [Text(f"warning: {warning}", style="yellow") for warning in self.warnings]
        return Group(*parts)

    def to_json(self) -> dict[str, Any]:
        """The run as `status --json` prints it: the manifest, training progress, warnings."""
        t = self.training
        return {"run": self.run_id, "path": str(self.paths.root), "state": self.manifest.state,
                "stage": self.manifest.active_stage, "reason": self.manifest.reason, "warnings": self.warnings,
                "training": None if t is None else {**dataclasses.asdict(t), "fraction": t.fraction},
                "scheduler": {stage: self.scheduler_says(stage) for stage in STAGES if self.scheduler_says(stage)},
                "manifest": self.manifest.to_json()}


def snapshot(runs: list[RunPaths], record: bool = True) -> list[RunView]:
    """Views of `runs`, refreshed against the scheduler; with `record` what the scheduler says
    is written back to the manifests (`list` and `watch` only read)."""
    return [RunView(paths, m, verdicts, training_progress(paths, m.train_minutes))
            for paths, (m, verdicts) in zip(runs, refresh(runs, record))]


def all_runs(storage: StoragePaths) -> list[RunPaths]:
    return [storage.run(run_id) for run_id in manifest.run_ids(storage)]


def runs_table(views: list[RunView], title: str | None = None) -> "RunsTable":
    """One row per run, newest first: state, active stage, training progress, archive figures."""
    return RunsTable(views, title)


@dataclass
class RunsTable:
    """The runs table, laid out for the width it is drawn at: every figure is shown whole, and
    run ids that do not fit are cut to a unique prefix (what `status PREFIX` accepts) + "…"."""

    views: list[RunView]
    title: str | None = None

    COLUMNS = ("run", "state", "stage", "training", "PSNR", "archive", "CR", "created")

    def rows(self) -> list[list[Text]]:
        rows = []
        for view in reversed(self.views):
            m, t = view.manifest, view.training
            archive = m.archived
            psnr = archive.psnr if archive else (t.psnr if t else None)
            training = ""
            if t is not None and m.stages["train"].state == "running":
                training = f"{t.fraction:.0%}" + (f" ETA {human_duration(t.eta_s)}" if t.eta_s is not None else "")
            elif t is not None:  # ended: the epochs it reached, not the time budget it used up
                training = f"{t.epoch}/{t.epochs} ep"
            stage = m.active_stage or next((s for s in STAGES if m.stages[s].state == m.state != "done"), "")
            state = styled_state(m.state)
            if view.warnings:
                state.append(" ⚠", style="yellow")
            rows.append([Text(view.run_id), state, Text(stage), Text(training), Text(_show(psnr, ".2f")),
                         Text(human_bytes(archive.bytes) if archive and archive.bytes is not None else ""),
                         Text(f"{archive.compression_ratio:.1f}" if archive and archive.compression_ratio else ""),
                         Text(_when(m.created))])
        return rows

    def table(self, ids: list[str], rows: list[list[Text]]) -> Table:
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD)
        for name in self.COLUMNS:
            table.add_column(name, justify="right" if name in ("PSNR", "CR") else "left", no_wrap=True)
        for row, run_id in zip(rows, ids):
            table.add_row(Text(run_id), *row[1:])
        return table

    def __rich_console__(self, console, options):
        rows = self.rows()
        ids = [row[0].plain for row in rows]
        natural = Measurement.get(console, options.update(max_width=10**4), self.table(ids, rows)).maximum
        too_wide = natural - options.max_width
        if too_wide > 0:
            widest = max(len(run_id) for run_id in ids)
            ids = short_ids(ids, max(widest - too_wide, max(len("run"), 8)))
        yield self.table(ids, rows)


def short_ids(ids: list[str], width: int) -> list[str]:
    """Each id, or when longer than `width` its shortest unique prefix of at least width - 1
    characters followed by "…"."""
    shortened = []
    for run_id in ids:
        if len(run_id) <= width:
            shortened.append(run_id)
            continue
        length = width - 1
        while length < len(run_id) and sum(other.startswith(run_id[:length]) for other in ids) > 1:
            length += 1
        shortened.append(run_id if length >= len(run_id) else run_id[:length] + "…")
    return shortened


def _when(stamp: float) -> str:
    """HH:MM today, else MM-DD HH:MM."""
    same_day = time.localtime(stamp)[:3] == time.localtime()[:3]
    return time.strftime("%H:%M" if same_day else "%m-%d %H:%M", time.localtime(stamp))


def styled_state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _elapsed(started: float | None, ended: float | None) -> float | None:
    return None if started is None else (ended or time.time()) - started


def _show(value: float | None, spec: str) -> str:
    return "" if value is None else "∞" if math.isinf(value) else format(value, spec)
