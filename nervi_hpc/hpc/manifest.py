"""Run state: `runs/<run-id>/manifest.json`, written atomically under a file lock.

The manifest records the spec's digest, the profile, and per stage (ingest → train → compress)
its job id, state, times, start count, failure reason and key figures (the stage's typed record,
nervi_hpc.stages.figures). The CLI (submit, cancel,
status) and the stage jobs all change it through `update`, which holds an exclusive `flock` on
the run's lock file while it reads, changes and atomically replaces the file, so concurrent
writers (two submits, a job finishing while the user cancels) never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import atomic
from ..config import DatasetSpec
from ..pipeline import BY_NAME, STAGES
from ..errors import RunError
from ..paths import RunPaths, StoragePaths
from ..schema import to_dict
from ..stages.figures import CompressFigures, StageFigures, TrainFigures, run_warnings

FORMAT = "nervi-run"
VERSION = 1
STATES = ("pending", "queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})


def spec_digest(spec: DatasetSpec) -> str:
    """sha256 of the spec's canonical JSON: the same dataset and settings give the same digest,
    whatever the YAML's layout, comments or key order."""
    return hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True).encode()).hexdigest()


@dataclass
class StageState:
    """One stage's job: state ∈ STATES, times as Unix seconds, `starts` counts job starts
    (requeues restart the job), `figures` the stage's results once done."""

    state: str = "pending"
    job_id: str | None = None
    tasks: int = 1
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    starts: int = 0
    reason: str | None = None
    figures: StageFigures | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)


@dataclass
class Manifest:
    """A run: what was submitted, where, and the state of each stage."""

    run_id: str
    name: str
    spec_sha256: str
    profile: str
    executor: str
    created: float
    stages: dict[str, StageState] = field(default_factory=lambda: {s: StageState() for s in STAGES})
    driver: dict[str, Any] | None = None  # local executor: {"pid", "host"} of the process chaining stages
    train_minutes: float | None = None  # total training budget set by `resume --max-minutes` (else the spec's)

    # ---- derived state
    @property
    def state(self) -> str:
        """failed if any stage failed, else cancelled if any was, else done when all are, else
        the furthest-along live state."""
        states = [s.state for s in self.stages.values()]
        for verdict in ("failed", "cancelled"):
            if verdict in states:
                return verdict
        if all(s == "done" for s in states):
            return "done"
        for live in ("running", "queued"):
            if live in states:
                return live
        return "pending"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def reason(self) -> str | None:
        """Why the run failed or was cancelled: the first such stage and its reason."""
        for name, stage in self.stages.items():
            if stage.state == self.state and stage.reason:
                return f"{name}: {stage.reason}"
        return None

    @property
    def warnings(self) -> list[str]:
        """What a finished run should not hide (stages.figures.ending_warnings); none before."""
        if self.state != "done":
            return []
        return run_warnings(self.trained, self.archived)

    @property
    def trained(self) -> TrainFigures | None:
        """The train stage's figures, once it is done."""
        return self.stages["train"].figures

    @property
    def archived(self) -> CompressFigures | None:
        """The compress stage's figures (the archive), once it is done."""
        return self.stages["compress"].figures

    @property
    def active_stage(self) -> str | None:
        """The stage running now, else the first one waiting, else None."""
        for wanted in ("running", "queued", "pending"):
            for name, stage in self.stages.items():
                if stage.state == wanted:
                    return name
        return None

    # ---- transitions (each applied inside `update`)
    def submitted(self, stage: str, job_id: str, tasks: int) -> None:
        """A (re)submission: a fresh job for the stage."""
        record = self.stages[stage]
        record.state, record.job_id, record.tasks = "queued", str(job_id), tasks
        record.submitted, record.started, record.ended, record.reason = time.time(), None, None, None

    def started(self, stage: str) -> bool:
        """A job of the stage starts (again after a requeue). False when the stage was cancelled
        meanwhile: the job must not run."""
        record = self.stages[stage]
        if record.state == "cancelled":
            return False
        record.state, record.reason, record.ended = "running", None, None
        record.started = record.started or time.time()
        record.starts += 1
        return True

    def finished(self, stage: str, figures: StageFigures | None) -> None:
        record = self.stages[stage]
        if record.state != "cancelled":
            record.state, record.ended, record.figures = "done", time.time(), figures

    def failed(self, stage: str, reason: str) -> None:
        """The stage failed; the stages after it will never start."""
        record = self.stages[stage]
        if record.state == "cancelled":
            return
        record.state, record.ended, record.reason = "failed", time.time(), reason
        self._never_start_after(stage, f"not started: {stage} failed")

    def ran_by_hand(self, stage: str, started: float, figures: StageFigures) -> None:
        """The stage was run outside the job manager (`nervi-hpc train RUN`, `compress RUN`):
        its figures are the run's now (no job of its own: job_id None)."""
        self.stages[stage] = StageState(state="done", started=started, ended=time.time(), figures=figures)

    def cancelled(self, stage: str, reason: str) -> None:
        record = self.stages[stage]
        if not record.terminal:
            record.state, record.ended, record.reason = "cancelled", time.time(), reason

    def _never_start_after(self, stage: str, reason: str) -> None:
        for later in STAGES[STAGES.index(stage) + 1:]:
            self.cancelled(later, reason)

    # ---- JSON
    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Manifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunError(f"{where}: not a nervi-hpc run manifest")
        if data.get("version") != VERSION:
            raise RunError(f"{where}: manifest version {data.get('version')!r}, this nervi-hpc reads {VERSION}")
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in data.items() if k in fields}
            values["stages"] = {name: _stage_state(name, data["stages"][name]) for name in STAGES}
            manifest = cls(**values)
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{where}: malformed manifest ({e})") from None
        bad = [s.state for s in manifest.stages.values() if s.state not in STATES]
        if bad:
            raise RunError(f"{where}: unknown stage state {bad[0]!r}")
        return manifest


def _stage_state(name: str, raw: dict[str, Any]) -> StageState:
    """A stage's record, its figures typed by the stage's registry entry."""
    state = StageState(**raw)
    state.figures = BY_NAME[name].figures.from_json(state.figures)
    return state


# ----------------------------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing). flock excludes other processes
    and other open files of this one, and works across NFS clients."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(paths: RunPaths) -> Manifest:
    try:
        text = paths.manifest.read_text()
    except FileNotFoundError:
        raise RunError(f"{paths.root}: no run here (no manifest.json)") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RunError(f"{paths.manifest}: not valid JSON ({e})") from None
    return Manifest.from_json(data, str(paths.manifest))


def write(paths: RunPaths, manifest: Manifest) -> None:
    atomic.write_json(paths.manifest, manifest.to_json())


def update(paths: RunPaths, change: Callable[[Manifest], Any]) -> Any:
    """Apply `change` to the manifest under the run's lock and write it back; return what
    `change` returned."""
    with locked(paths.manifest_lock):
        manifest = read(paths)
        outcome = change(manifest)
        write(paths, manifest)
    return outcome


# ----------------------------------------------------------------------------------------------
# Finding runs


def run_ids(storage: StoragePaths) -> list[str]:
    """Every run under storage_root, oldest first."""
    if not storage.runs.is_dir():
        return []
    found = [p for p in storage.runs.iterdir() if (p / "manifest.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: (_created(p), p.name))]


def _created(run_dir: Path) -> float:
    try:
        return float(json.loads((run_dir / "manifest.json").read_text())["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def resolve(storage: StoragePaths, ref: str) -> RunPaths:
    """The run named `ref`: its id, a unique prefix of it, or its folder."""
    if os.sep in ref and (Path(ref) / "manifest.json").is_file():
        return RunPaths(Path(ref))
    ids = run_ids(storage)
    if ref in ids:
        return storage.run(ref)
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return storage.run(matches[0])
    if not matches:
        known = f" (runs: {', '.join(ids[-5:])})" if ids else " (no runs yet)"
        raise RunError(f"{storage.runs}: no run {ref!r}{known}")
    raise RunError(f"run {ref!r} is ambiguous: {', '.join(matches)}")
