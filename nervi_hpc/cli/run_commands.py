"""The commands on runs in shared storage: submit, resume, list, status, watch, cancel, fetch,
logs. Each resolves the cluster.yaml and the run, then calls the job layer (nervi_hpc.hpc)."""

from __future__ import annotations

import sys
from pathlib import Path

from .output import print_json


def _storage():
    from ..config import load_cluster
    from ..paths import StoragePaths

    cluster = load_cluster()
    return cluster, StoragePaths(Path(cluster.storage_root).resolve())


def _run(ref: str):
    from ..hpc.manifest import resolve

    return resolve(_storage()[1], ref)


def cmd_submit(args) -> None:
    from ..hpc import lifecycle

    cluster, _ = _storage()
    if args.dry_run:
        print(lifecycle.dry_run(args.spec, cluster, args.profile), end="")
        return
    submission = lifecycle.submit(args.spec, cluster, args.profile, new=args.new)
    print(f"checked {submission.checked}")
    print(submission.summary())
    if args.wait:
        try:
            _wait(submission.paths)
        except KeyboardInterrupt:
            run = submission.paths.root.name
            print(f"\nstopped waiting; {run} goes on (nervi-hpc watch · nervi-hpc cancel {run})", file=sys.stderr)
            raise
    else:
        print(f"follow it: nervi-hpc watch · nervi-hpc status {submission.paths.root.name}")


def _wait(paths) -> None:
    """Print the run's progress until it ends; the result (or one error line) at the end."""
    import time

    from ..errors import RunError
    from ..hpc.status import snapshot
    from ..units import human_duration

    said, last_epoch_line = None, 0.0
    while True:
        view = snapshot([paths])[0]
        m = view.manifest
        states = tuple((s, r.state) for s, r in m.stages.items())
        if states != said:
            stage = m.active_stage
            what = f"{stage} {m.stages[stage].state}" if stage else m.state
            print(f"{time.strftime('%H:%M:%S')} {paths.root.name}: {what}", flush=True)
            said = states
        t = view.training
        if t and m.stages["train"].state == "running" and time.monotonic() - last_epoch_line > 30:
            print(f"{time.strftime('%H:%M:%S')}   {view.details('train')}", flush=True)
            last_epoch_line = time.monotonic()
        if m.terminal:
            break
        time.sleep(2)
    if m.state != "done":
        raise RunError(f"{paths.root.name} {m.state}: {m.reason} (logs: nervi-hpc logs {paths.root.name})")
    f = m.archived
    archive = paths.root / f.archive
    seconds = (m.stages["compress"].ended or 0) - (m.stages["ingest"].started or 0)
    print(f"done in {human_duration(seconds)}: {archive}")
    print(f"  {f.bytes:,} bytes, CR {f.compression_ratio:.1f}, PSNR {f.psnr:.2f} dB "
          f"(foreground {f.foreground_psnr:.2f} dB); report: {paths.eval_dir / 'summary.md'}")
    print(f"  decode: nervi-hpc decode {archive} --all -o decoded/   (one view: --param NAME=VALUE … -o view.png)")
    print(f"  view:   nervi-hpc view {archive}")
    for warning in view.warnings:
        print(f"warning: {warning}")


def _print_from(path, offset: int) -> int:
    """Print `path` from byte `offset` on; return the offset reached."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()
    return offset + len(chunk)


def cmd_resume(args) -> None:
    from ..hpc import lifecycle

    cluster, _ = _storage()
    submission = lifecycle.resume(_run(args.run_id), cluster, args.max_minutes)
    print(submission.summary())
    if args.wait:
        _wait(submission.paths)
    else:
        print(f"follow it: nervi-hpc watch · nervi-hpc status {submission.paths.root.name}")


def cmd_list(args) -> None:
    from rich.console import Console

    from ..hpc.status import all_runs, runs_table, snapshot

    _, storage = _storage()
    views = snapshot(all_runs(storage), record=False)  # read-only: list rewrites no manifest
    if args.json:
        print_json([view.to_json() for view in views])
        return
    if not views:
        print(f"no runs in {storage.runs}")
        return
    console = Console()
    console.print(runs_table(views, title=str(storage.runs)))
    for view in views:
        for warning in view.warnings:
            console.print(f"⚠ {view.run_id}: {warning}", style="yellow", soft_wrap=True)


def cmd_status(args) -> None:
    from rich.console import Console

    from ..hpc.status import snapshot

    if args.run_id is None:
        cmd_list(args)
        return
    view = snapshot([_run(args.run_id)])[0]
    if args.json:
        print_json(view.to_json())
        return
    Console().print(view)


def cmd_watch(args) -> None:
    from ..hpc.tui import watch

    _, storage = _storage()
    if args.run_id is not None:
        _run(args.run_id)  # a wrong name fails here, with the known runs
    watch(storage, args.run_id, interval=args.interval, once=args.once)


def cmd_cancel(args) -> None:
    from ..hpc.lifecycle import cancel

    m = cancel(_run(args.run_id))
    print(f"{m.run_id}: {m.state}")


def cmd_fetch(args) -> None:
    from ..hpc.results import fetch

    paths = _run(args.run_id)
    written = fetch(paths, args.dest, force=args.force)
    for path in written:
        print(path)
    print(f"archive verified (sha256); decode: nervi-hpc decode {written[0]} --all -o decoded/")


def cmd_logs(args) -> None:
    from ..hpc import manifest
    from ..hpc.results import log_path

    paths = _run(args.run_id)
    if args.follow:
        _follow(paths, args.stage, args.task)
        return
    path = log_path(paths, manifest.read(paths), args.stage, args.task)
    try:
        sys.stdout.write(path.read_text(errors="replace"))
    except FileNotFoundError:
        print(f"{path}: no output yet", file=sys.stderr)


def _follow(paths, stage: str | None, task: int, poll_s: float = 1.0) -> None:
    """Print a job log as it grows, moving on to each next stage's log (unless `stage` is
    given), until the run (or that stage) ends."""
    import time

    from ..errors import RunError
    from ..hpc.results import log_path
    from ..hpc.status import snapshot

    shown, offset, last_round = None, 0, False
    while True:
        m = snapshot([paths])[0].manifest  # refreshed: a job that died ends the follow too
        ended = m.terminal if stage is None else m.stages[stage].terminal
        try:
            path = log_path(paths, m, stage, task)
        except RunError:  # no job yet: wait for the first
            path = None
        if path is not None and path != shown:
            if shown is not None:
                _print_from(shown, offset)  # the last lines of the job before
                print(f"==> {path} <==", flush=True)
            shown, offset = path, 0
        if path is not None:
            offset = _print_from(path, offset)
        if last_round:
            return
        last_round = ended  # one more read after a pause: a job writes its last lines after its record
        time.sleep(poll_s)
