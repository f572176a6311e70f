"""The `nervi-hpc` command: thin glue over the stages. Any NerviError → one line, exit 1."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .errors import NerviError


def _source_from_arg(arg: str, pattern: str | None, mode: str, allow_outside: bool = False):
    """A Source from a dataset.yaml, a Cinema database folder, or an image folder + pattern."""
    from .config import CinemaSource, FolderSource, load_dataset
    from .data.sources import open_source
    from .errors import ConfigError, SourceError

    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
        if mode != "unknown":
            raise ConfigError(f"{path}: --mode is for folders; set source.mode in the dataset.yaml")
        source = load_dataset(path).source
        if allow_outside and isinstance(source, CinemaSource):
            source = dataclasses.replace(source, allow_outside=True)
        return open_source(source)
    if not path.is_dir():
        raise SourceError(f"{path}: not a dataset.yaml, Cinema database or image folder")
    if pattern:
        return open_source(FolderSource(kind="folder", path=str(path), pattern=pattern, mode=mode))
    if (path / "data.csv").exists():
        return open_source(CinemaSource(kind="cinema", path=str(path), mode=mode, allow_outside=allow_outside))
    raise SourceError(f"{path}: no data.csv (not a Cinema database); for an image folder give --pattern")


def cmd_render(args) -> None:
    from .config import SyntheticSource, load_dataset
    from .data.sources import open_source
    from .data.sources.cinema import write_cinema
    from .errors import ConfigError

    spec = load_dataset(args.spec)
    if not isinstance(spec.source, SyntheticSource):
        raise ConfigError(f"{args.spec}: source.kind is {spec.source.kind!r}; render needs a synthetic scene")
    source = open_source(spec.source)
    write_cinema(source, args.out, progress=not args.quiet)
    print(f"wrote {len(source)} images of {source.size[1]}×{source.size[0]} to {args.out}")


def cmd_ingest(args) -> None:
    from .stages.ingest.run import ingest

    source = _source_from_arg(args.source, args.pattern, args.mode, args.allow_outside)
    result = ingest(source, args.output, shard_size=args.shard_size, workers=args.workers,
                    progress=not args.quiet, contact_sheet=args.contact_sheet)
    if result.rank == 0:  # under mpiexec every rank returns the same result
        print(result.summary())


def cmd_train(args) -> None:
    import shutil
    import time

    from .config import load_dataset
    from .paths import RunPaths
    from .stages.figures import TrainFigures
    from .stages.train import train

    paths = RunPaths(Path(args.run_dir))
    _not_while_a_job_runs(paths, "train")
    if args.spec:
        load_dataset(args.spec)  # validate before copying
        paths.root.mkdir(parents=True, exist_ok=True)
        from . import atomic

        with atomic.atomic_path(paths.spec) as tmp:
            shutil.copyfile(args.spec, tmp)
    spec, started = load_dataset(paths.spec), time.time()
    result = train(paths.root, spec, max_minutes=args.max_minutes, progress=not args.quiet)
    print(result.summary())
    _record_by_hand(paths, "train", started, TrainFigures.of(result, spec.train.epochs))


def _not_while_a_job_runs(paths, stage: str) -> None:
    """A stage run by hand on a managed run must not race that run's own job."""
    from .errors import RunError
    from .hpc.manifest import read

    if paths.manifest.is_file():
        record = read(paths).stages[stage]
        if record.state in ("queued", "running"):
            raise RunError(f"{paths.root.name}: {stage} is {record.state} as job {record.job_id}; "
                           f"wait for it or nervi-hpc cancel {paths.root.name} first")


def _record_by_hand(paths, stage: str, started: float, figures) -> None:
    """Keep a managed run's record (manifest.json) in step with a stage run by hand."""
    from .hpc import manifest

    if paths.manifest.is_file():
        manifest.update(paths, lambda m: m.ran_by_hand(stage, started, figures))


def cmd_decode(args) -> None:
    from .errors import ParameterError
    from .parameters import parse_assignments, read_params_csv
    from .stages.decode.decoder import Decoder, unseen_notes
    from .stages.decode.outputs import write_outputs

    chosen = [flag for flag, given in (("--param", args.param), ("--params-file", args.params_file),
                                       ("--all", args.all)) if given]
    if len(chosen) != 1:
        raise ParameterError("give exactly one of --param (repeated), --params-file or --all"
                             + (f", not {' and '.join(chosen)}" if chosen else ""))
    decoder = Decoder.open(args.archive, device=args.device, batch_size=args.batch_size)
    if args.all:
        params = decoder.grid()
    elif args.params_file:
        params = read_params_csv(args.params_file, decoder.names)
    else:
        params = parse_assignments(decoder.names, args.param)
    for note in unseen_notes(decoder, params):
        print(f"note: {note}", file=sys.stderr)
    print(write_outputs(decoder, params, args.output, archive=args.archive, progress=not args.quiet,
                        rgba=args.rgba))


def cmd_info(args) -> None:
    from .units import human_bytes, human_duration
    from .stages.decode.decoder import Decoder
    from .viewer.archives import archive_facts

    facts = archive_facts(Path(args.archive), Decoder.open(args.archive, device="cpu"))
    if args.json:
        _print_json(facts)
        return
    f, t = facts, facts["training"]
    print(f"{args.archive}: {f['bytes']:,} bytes ({human_bytes(f['bytes'])}), CR {f['compression_ratio']:.1f}: "
          f"{f['count']} images of {f['width']}×{f['height']} ({f['mode']}) on background "
          f"{tuple(f['background'])}")
    if f["source"]:
        print(f"  source: {f['source']}")
    width = max(len(p["name"]) for p in f["parameters"])
    for p in f["parameters"]:
        grid = [format(v, "g") for v in p["grid"]]
        shown = " ".join(grid if len(grid) <= 12 else grid[:6] + ["…"] + grid[-2:])
        period = f"; periodic (period {p['period']:g}: any value decodes)" if p["period"] else ""
        span = f"{p['low']:g} … {p['high']:g}" if p["high"] > p["low"] else f"{p['low']:g} only"
        print(f"  {p['name']:<{width}}  {span}, "
              f"{len(grid)} values: {shown}{period}")
    m = f["model"]
    print(f"  model: {m['arch']} c1={m['c1']} c2={m['c2']}"
          + (f", feature grids ({m['grid_features']} features)" if m["grid_features"] else "")
          + f", {m['composite']} compositing; {f['weights']:,} weights at {f['bits']} bits "
          f"({f['bits_per_weight']:.2f} bits/weight with the header)")
    planned = f" of {t['epochs_planned']}" if t.get("epochs_planned") else ""
    how = ", stopped at the time limit" if t.get("stopped_early") else ""
    print(f"  trained: {t.get('epochs')} epochs{planned}{how}, {t.get('steps')} steps in "
          f"{human_duration(t.get('seconds'))}; training PSNR "
          + (f"{t['psnr']:.2f} dB" if t.get("psnr") is not None else "n/a")
          + (f"; evaluated PSNR {f['psnr_db']:.2f} dB" if f["psnr_from"] == "evaluation" else ""))


def cmd_eval(args) -> None:
    from .stages.evaluate.measure import default_eval_dir, evaluate

    out = args.output or default_eval_dir(args.archive)
    result = evaluate(args.archive, args.store, out, device=args.device, batch_size=args.batch_size,
                      progress=not args.quiet)
    print(result.summary())


def cmd_compress(args) -> None:
    import time

    from . import atomic
    from .paths import RunPaths
    from .stages.compress import compress
    from .stages.figures import CompressFigures

    paths = RunPaths(Path(args.run_dir))
    _not_while_a_job_runs(paths, "compress")
    started = time.time()
    result = compress(args.run_dir, bits=args.bits, name=args.name, evaluate=not args.no_eval,
                      device=args.device, progress=not args.quiet)
    print(result.summary())
    if result.evaluation is not None:
        print(result.evaluation.summary())
    _record_by_hand(paths, "compress", started,
                    CompressFigures.of(result, paths.root, atomic.file_sha256(result.archive)))


def cmd_bench(args) -> None:
    from .bench.runner import Bench

    bench = Bench(args.spec, args.out, max_minutes=args.max_minutes, only=args.only, progress=not args.quiet)
    if args.report_only:
        bench.report()
    else:
        bench.run()


def cmd_view(args) -> None:
    from .viewer import serve

    serve(args.archives, host=args.host, port=args.port, device=args.device,
          cache_bytes=args.cache_mb << 20, store=args.store)


def _storage():
    from .config import load_cluster
    from .paths import StoragePaths

    cluster = load_cluster()
    return cluster, StoragePaths(Path(cluster.storage_root).resolve())


def _run(ref: str):
    from .hpc.manifest import resolve

    return resolve(_storage()[1], ref)


def cmd_submit(args) -> None:
    from .hpc import lifecycle

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

    from .errors import RunError
    from .hpc.status import snapshot
    from .units import human_duration

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
    from .hpc import lifecycle

    cluster, _ = _storage()
    submission = lifecycle.resume(_run(args.run_id), cluster, args.max_minutes)
    print(submission.summary())
    if args.wait:
        _wait(submission.paths)
    else:
        print(f"follow it: nervi-hpc watch · nervi-hpc status {submission.paths.root.name}")


def cmd_list(args) -> None:
    from rich.console import Console

    from .hpc.status import all_runs, runs_table, snapshot

    _, storage = _storage()
    views = snapshot(all_runs(storage), record=False)  # read-only: list rewrites no manifest
    if args.json:
        _print_json([view.to_json() for view in views])
        return
    if not views:
        print(f"no runs in {storage.runs}")
        return
    console = Console()
    console.print(runs_table(views, title=str(storage.runs)))
    for view in views:
        for warning in view.warnings:
            console.print(f"⚠ {view.run_id}: {warning}", style="yellow", soft_wrap=True)


def _print_json(data) -> None:
    import json

    print(json.dumps(data, indent=2))


def cmd_status(args) -> None:
    from rich.console import Console

    from .hpc.status import snapshot

    if args.run_id is None:
        cmd_list(args)
        return
    view = snapshot([_run(args.run_id)])[0]
    if args.json:
        _print_json(view.to_json())
        return
    Console().print(view)


def cmd_watch(args) -> None:
    from .hpc.tui import watch

    _, storage = _storage()
    if args.run_id is not None:
        _run(args.run_id)  # a wrong name fails here, with the known runs
    watch(storage, args.run_id, interval=args.interval, once=args.once)


def cmd_cancel(args) -> None:
    from .hpc.lifecycle import cancel

    m = cancel(_run(args.run_id))
    print(f"{m.run_id}: {m.state}")


def cmd_fetch(args) -> None:
    from .hpc.status import fetch

    paths = _run(args.run_id)
    written = fetch(paths, args.dest, force=args.force)
    for path in written:
        print(path)
    print(f"archive verified (sha256); decode: nervi-hpc decode {written[0]} --all -o decoded/")


def cmd_logs(args) -> None:
    from .hpc import manifest
    from .hpc.status import log_path

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

    from .errors import RunError
    from .hpc.status import log_path, snapshot

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


def _decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: about 4 M pixels)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nervi-hpc", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("render", help="render a synthetic scene of a dataset.yaml into a Cinema database")
    p.add_argument("spec", help="dataset.yaml with a synthetic source")
    p.add_argument("out", help="output Cinema database folder (e.g. out/tornado.cdb)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_render)

    p = verbs.add_parser("ingest", help="write renders into a sharded Zarr v3 store")
    p.add_argument("source", help="dataset.yaml, Cinema database folder, or image folder (with --pattern)")
    p.add_argument("-o", "--output", required=True, help="output store, e.g. renders.zarr")
    p.add_argument("--pattern", help="file name pattern of an image folder, e.g. 't{t}_theta{theta}_phi{phi}.png'")
    p.add_argument("--mode", choices=["ir", "dvr", "unknown"], default="unknown",
                   help="rendering mode recorded in the store (a Cinema database or folder does not say)")
    p.add_argument("--shard-size", type=int, help="images per shard (default: about 64 MB of pixels)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count, at most 8); "
                   "under mpiexec/srun the MPI ranks are the workers")
    p.add_argument("--contact-sheet", help="also write a contact sheet PNG of the store")
    p.add_argument("--allow-outside", action="store_true",
                   help="let a Cinema database's FILE values name images outside its folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_ingest)

    p = verbs.add_parser("train", help="train (or resume) NeRVI on RUN_DIR/renders.zarr, in this process")
    p.add_argument("run_dir", help="run folder holding dataset.yaml and renders.zarr")
    p.add_argument("--spec", help="copy this dataset.yaml into the run folder first")
    p.add_argument("--max-minutes", type=float, help="the run's total training minutes, earlier sessions "
                   "included (default: train.max_minutes); it stops there with a checkpoint, and the lr "
                   "schedule is fitted to that budget")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = verbs.add_parser("decode", help="decode images from a .nervi archive (one, a list, or the whole grid)")
    p.add_argument("archive", help="the .nervi archive")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a parameter value of a single image; repeat it for each parameter (e.g. --param theta=45)")
    p.add_argument("--params-file", help="CSV whose header names the parameters, one image per row")
    p.add_argument("--all", action="store_true", help="every image of the training grid")
    p.add_argument("-o", "--output", required=True,
                   help="IMG.png or IMG.jpg (one image), OUT.cdb (a Cinema database: data.csv + PNGs), "
                        "OUT.zarr (a renders store) or a folder (PNGs named by parameters)")
    p.add_argument("--rgba", action="store_true", help="PNGs with the decoded foreground mask as alpha")
    _decoding_options(p)
    p.set_defaults(run=cmd_decode)

    p = verbs.add_parser("info", help="what an archive holds: parameters, ranges, grid, size, CR, model, training")
    p.add_argument("archive", help="the .nervi archive")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(run=cmd_info)

    p = verbs.add_parser("eval", help="decode every image of a store from an archive; report quality, size, speed")
    p.add_argument("archive", help="the .nervi archive")
    p.add_argument("--store", required=True, help="the ground truth: the renders.zarr the archive was trained "
                   "on, a Cinema database, or a folder of PNGs named as decode names them")
    p.add_argument("-o", "--output",
                   help="report folder (default: RUN/eval/ for RUN/archive/X.nervi, else X-eval/ beside X)")
    _decoding_options(p)
    p.set_defaults(run=cmd_eval)

    p = verbs.add_parser("compress", help="latest checkpoint of RUN_DIR → archive/<name>.nervi → eval/")
    p.add_argument("run_dir", help="run folder holding checkpoints/ and renders.zarr")
    p.add_argument("--bits", type=int, help="quantization bits (default: the run's model.bits, else 9)")
    p.add_argument("--name", help="archive name (default: the dataset's name)")
    p.add_argument("--no-eval", action="store_true", help="write the archive only")
    p.add_argument("--device", help="evaluation device: cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_compress)

    p = verbs.add_parser("bench", help="rate–distortion benchmark: nervi-hpc variants against standard codecs")
    p.add_argument("spec", help="bench spec, e.g. jobs/bench/tornado-ir.yaml")
    p.add_argument("--out", help="output folder (default: bench/<spec name>/)")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="run only these nervi variants or codecs")
    p.add_argument("--max-minutes", type=float, help="training minutes of every nervi run (overrides the spec)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the results on disk")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_bench)

    p = verbs.add_parser("view", help="explore archives in the browser: a local web viewer decoding on the fly")
    p.add_argument("archives", nargs="+", metavar="ARCHIVE", help="one or more .nervi archives (e.g. IR and DVR)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--cache-mb", type=int, default=256, help="encoded frames kept per archive, in MB (default 256)")
    p.add_argument("--store", help="the renders.zarr the archives were trained on: ground truth and ΔE beside "
                   "each decoded view of the training grid")
    p.set_defaults(run=cmd_view)

    p = verbs.add_parser("submit", help="run ingest → train → compress for a dataset.yaml on a cluster.yaml profile")
    p.add_argument("spec", help="dataset.yaml")
    p.add_argument("--profile", help="cluster.yaml profile (default: its default_profile)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch scripts (or local jobs); submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends; print the result")
    p.add_argument("--new", action="store_true", help="start a new run even if this spec was submitted before")
    p.set_defaults(run=cmd_submit)

    p = verbs.add_parser("resume", help="continue a run that failed, was cancelled or trains on with more minutes")
    p.add_argument("run_id", metavar="RUN", help="run id or unique prefix")
    p.add_argument("--max-minutes", type=float, help="the run's new total training minutes, earlier training "
                   "included: train on from the newest checkpoint, then compress again")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends; print the result")
    p.set_defaults(run=cmd_resume)

    p = verbs.add_parser("list", help="all runs: state, stage, training progress, archive")
    p.add_argument("--json", action="store_true", help="print the runs as JSON (manifest, progress, warnings)")
    p.set_defaults(run=cmd_list)

    p = verbs.add_parser("status", help="a run's stages: jobs, states, epoch, loss, PSNR, ETA, archive, CR")
    p.add_argument("run_id", metavar="RUN", nargs="?", help="run id or unique prefix (default: all runs)")
    p.add_argument("--json", action="store_true", help="print the run as JSON (manifest, progress, warnings)")
    p.set_defaults(run=cmd_status)

    p = verbs.add_parser("watch", help="live dashboard of all runs with the active job's log")
    p.add_argument("run_id", metavar="RUN", nargs="?", help="run to show in detail (default: the newest active one)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(run=cmd_watch)

    p = verbs.add_parser("cancel", help="cancel a run's unfinished stages")
    p.add_argument("run_id", metavar="RUN", help="run id or unique prefix")
    p.set_defaults(run=cmd_cancel)

    p = verbs.add_parser("fetch", help="copy a finished run's archive (checksum verified), summary and contact sheet")
    p.add_argument("run_id", metavar="RUN", help="run id or unique prefix")
    p.add_argument("dest", help="destination folder")
    p.add_argument("--force", action="store_true", help="overwrite files already in DEST")
    p.set_defaults(run=cmd_fetch)

    p = verbs.add_parser("logs", help="print the log of a run's job")
    p.add_argument("run_id", metavar="RUN", help="run id or unique prefix")
    p.add_argument("stage", nargs="?", choices=("ingest", "train", "compress"),
                   help="default: the active stage, else the last one that ran")
    p.add_argument("--task", type=int, default=0, help="task of a multi-task job (default 0)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="print the log as it grows, then each next stage's, until the run ends")
    p.set_defaults(run=cmd_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except NerviError as e:
        print(f"nervi-hpc {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nervi-hpc {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
