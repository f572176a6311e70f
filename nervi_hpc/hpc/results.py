"""A run's outputs: its jobs' logs (which one matters now, its path, its tail) and, once the run
is done, its archive and report copied out with the archive's checksum verified (`fetch`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import atomic
from ..errors import ArchiveError, RunError
from ..paths import RunPaths
from ..pipeline import STAGES
from . import manifest
from .manifest import Manifest



def log_stage(m: Manifest) -> str | None:
    """The stage whose log matters now: the running one, else the failed one, else the last
    that started, else the first queued; None before any job exists."""
    for wanted in ("running", "failed"):
        for stage in STAGES:
            if m.stages[stage].state == wanted and m.stages[stage].job_id:
                return stage
    started = [s for s in STAGES if m.stages[s].starts]
    queued = [s for s in STAGES if m.stages[s].job_id]
    return started[-1] if started else (queued[0] if queued else None)


def log_path(paths: RunPaths, m: Manifest, stage: str | None = None, task: int = 0) -> Path:
    """The log of task `task` of `stage`'s job (default stage: `log_stage`)."""
    stage = stage or log_stage(m)
    if stage is None:
        raise RunError(f"{paths.root.name}: no job has been submitted yet")
    record = m.stages[stage]
    if record.job_id is None:
        raise RunError(f"{paths.root.name}: {stage} has no job yet ({record.state})")
    if not 0 <= task < record.tasks:
        raise RunError(f"{paths.root.name}: {stage}'s job has tasks 0..{record.tasks - 1}, not {task}")
    return paths.job_log(record.job_id, task)


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file ([] when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - 200 * lines - 4096, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def fetch(paths: RunPaths, dest: str | Path, *, force: bool = False) -> list[Path]:
    """Copy a finished run's archive X.nervi (checked against the sha256 recorded when it was
    written) and its report as X.summary.json, X.summary.md and X.contact.png into the folder
    `dest` (named after the archive, so several runs can share one folder). Refuses to overwrite
    an existing file unless `force`."""
    m = manifest.read(paths)
    figures = m.archived
    if m.stages["compress"].state != "done" or figures is None or figures.archive is None:
        raise RunError(f"{paths.root.name}: {m.state}; there is no archive to fetch yet")
    archive = paths.root / figures.archive
    sources = [archive] + [paths.eval_dir / name for name in ("summary.json", "summary.md", "contact.png")]
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise RunError(f"{dest}: not a folder; fetch writes the archive and its report into a folder")
    targets = [dest / archive.name] + [dest / f"{archive.stem}.{source.name}" for source in sources[1:]]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise RunError(f"{missing[0]}: missing from the finished run")
    if not force:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise RunError(f"{existing[0]}: exists; not overwriting it (--force to replace)")
    if atomic.file_sha256(archive) != figures.sha256:
        raise ArchiveError(f"{archive}: sha256 differs from the one recorded when it was written; "
                           f"the stored archive is damaged")
    for source, target in zip(sources, targets):
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
            if source == archive and atomic.file_sha256(tmp) != figures.sha256:
                raise ArchiveError(f"{target}: the copy's sha256 differs from the archive's; nothing written")
    return targets
