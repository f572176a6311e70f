"""`nervi-hpc watch`: a rich Live dashboard of every run, refreshed from the manifests, the
training metrics log and the scheduler, with the tail of the focused run's active job log."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import progress
from ..errors import RunError
from ..paths import StoragePaths
from ..units import human_duration
from .results import log_path, tail
from .status import RunView, all_runs, runs_table, snapshot, styled_state

LOG_LINES = 12


def pick_focus(views: list[RunView], wanted: str | None = None) -> RunView | None:
    """The run to show in detail: `wanted` (an id or unique prefix), else the newest running
    or queued run, else the newest run."""
    if wanted is not None:
        matches = [v for v in views if v.run_id == wanted] or [v for v in views if v.run_id.startswith(wanted)]
        if len(matches) != 1:
            raise RunError(f"run {wanted!r}: " + ("ambiguous" if matches else "no such run"))
        return matches[0]
    live = [v for v in views if v.manifest.state in ("running", "queued", "pending")]
    return (live or views or [None])[-1]


def dashboard(views: list[RunView], focus: RunView | None, storage: StoragePaths, log_lines: int = LOG_LINES):
    """The whole screen: a header, the runs table, the focused run's stages (with a training
    progress bar) and the tail of its active job's log."""
    counts = {}
    for view in views:
        counts[view.manifest.state] = counts.get(view.manifest.state, 0) + 1
    header = Text.assemble(("nervi-hpc watch", "bold"), f" · {storage.runs} · {len(views)} run(s)")
    for state, count in sorted(counts.items()):
        header.append(" · ")
        header.append_text(styled_state(f"{count} {state}"))
    header.append(f" · {time.strftime('%H:%M:%S')} · Ctrl-C to quit", style="dim")
    if not views:
        return Group(header, Text("no runs yet: nervi-hpc submit dataset.yaml", style="dim"))
    parts = [header, runs_table(views)]
    if focus is not None:
        parts.append(_focus_panel(focus, log_lines))
    return Group(*parts)


def _focus_panel(view: RunView, log_lines: int) -> Panel:
    body = [view]
    training = view.training
    if training is not None and view.manifest.stages["train"].state in ("running", "done"):
        said = [f"epoch {training.epoch}/{training.epochs}"]
        if training.budget_s is not None and training.elapsed_s is not None:
            said.append(f"{human_duration(training.elapsed_s)} of a {human_duration(training.budget_s)} budget")
        if training.images_per_s:
            said.append(f"{training.images_per_s:.1f} img/s")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text("train"), ProgressBar(total=1000, completed=round(1000 * training.fraction), width=40),
                    Text(f"{training.fraction:.0%} · " + " · ".join(said)))
        body.append(bar)
    stage = view.manifest.active_stage
    now = view.progress(stage) if stage else None
    if now is not None:  # the figures are in the table above; the record adds where and how much memory
        body.append(Text(f"{stage} runs on {progress.where(now)}", style="dim"))
    try:
        path = log_path(view.paths, view.manifest)
    except RunError:
        path = None
    if path is not None:
        lines = tail(path, log_lines)
        log = Text("\n".join(lines) if lines else "(no output yet)", style="dim" if not lines else "")
        body.append(Panel(log, title=str(path), title_align="left", border_style="dim"))
    return Panel(Group(*body), title=view.run_id, title_align="left")


def watch(storage: StoragePaths, focus: str | None = None, *, interval: float = 2.0, once: bool = False,
          console: Console | None = None) -> None:
    """Show the dashboard, refreshed every `interval` seconds until Ctrl-C (once: one frame)."""
    console = console or Console()

    def frame():
        views = snapshot(all_runs(storage), record=False)  # read-only: watch rewrites no manifest
        return dashboard(views, pick_focus(views, focus), storage)

    if once:
        console.print(frame())
        return
    with Live(frame(), console=console, refresh_per_second=4, screen=False, transient=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(frame())
        except KeyboardInterrupt:
            return
