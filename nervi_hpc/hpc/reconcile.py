"""The scheduler's verdicts applied to run manifests: a job that ended without recording its end
failed (or was cancelled), and `refresh` writes that back, one query per backend for all runs."""

from __future__ import annotations

import functools
import socket

from ..paths import RunPaths
from . import manifest
from .backends import backend_for
from .backends.base import Verdict, process_alive
from .backends.local import DRIVER_MODULE
from .manifest import Manifest


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
            and not process_alive(int(m.driver["pid"]), DRIVER_MODULE)):
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


def refresh(runs: list[RunPaths], record: bool = True) -> list[tuple[Manifest, dict[str, Verdict]]]:
    """Each run's manifest after applying the scheduler's verdicts (with `record`, written back
    where they changed it; read-only commands only show them), with the verdicts on its live
    jobs. One query per scheduler for all runs."""
    manifests = [manifest.read(paths) for paths in runs]
    wanted: dict[type, set[str]] = {}
    for m in manifests:
        scheduler = backend_for(m)
        if scheduler is not None and not m.terminal:
            wanted.setdefault(type(scheduler), set()).update(
                s.job_id for s in m.stages.values() if not s.terminal and s.job_id)
    answers = {kind: kind().query(ids) for kind, ids in wanted.items()}
    refreshed = []
    for paths, m in zip(runs, manifests):
        scheduler = backend_for(m)
        verdicts = answers.get(type(scheduler), {}) if scheduler is not None and not m.terminal else {}
        if apply_verdicts(m, verdicts, paths) and record:
            m = manifest.update(paths, functools.partial(_applied, verdicts=verdicts, paths=paths))
        refreshed.append((m, verdicts))
    return refreshed


def _applied(m: Manifest, verdicts: dict[str, Verdict], paths: RunPaths) -> Manifest:
    apply_verdicts(m, verdicts, paths)
    return m
