"""The commands that run one stage by hand or read an archive: render, ingest, train, compress,
eval, decode, info, view, bench. Each is thin glue over its stage; imports are lazy, so that
`nervi-hpc --help` and the run commands start fast."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .output import print_json


def _source_from_arg(arg: str, pattern: str | None, mode: str, allow_outside: bool = False):
    """A Source from a dataset.yaml, a Cinema database folder, or an image folder + pattern."""
    from ..config import CinemaSource, FolderSource, load_dataset
    from ..data.sources import open_source
    from ..errors import ConfigError, SourceError

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
    from ..config import SyntheticSource, load_dataset
    from ..data.sources import open_source
    from ..data.sources.cinema import write_cinema
    from ..errors import ConfigError

    spec = load_dataset(args.spec)
    if not isinstance(spec.source, SyntheticSource):
        raise ConfigError(f"{args.spec}: source.kind is {spec.source.kind!r}; render needs a synthetic scene")
    source = open_source(spec.source)
    write_cinema(source, args.out, progress=not args.quiet)
    print(f"wrote {len(source)} images of {source.size[1]}×{source.size[0]} to {args.out}")


def cmd_ingest(args) -> None:
    from ..stages.ingest.run import ingest

    source = _source_from_arg(args.source, args.pattern, args.mode, args.allow_outside)
    result = ingest(source, args.output, shard_size=args.shard_size, workers=args.workers,
                    progress=not args.quiet, contact_sheet=args.contact_sheet)
    if result.rank == 0:  # under mpiexec every rank returns the same result
        print(result.summary())


def cmd_train(args) -> None:
    import shutil
    import time

    from ..config import load_dataset
    from ..paths import RunPaths
    from ..stages.figures import TrainFigures
    from ..stages.train import train

    paths = RunPaths(Path(args.run_dir))
    _not_while_a_job_runs(paths, "train")
    if args.spec:
        load_dataset(args.spec)  # validate before copying
        paths.root.mkdir(parents=True, exist_ok=True)
        from .. import atomic

        with atomic.atomic_path(paths.spec) as tmp:
            shutil.copyfile(args.spec, tmp)
    spec, started = load_dataset(paths.spec), time.time()
    result = train(paths.root, spec, max_minutes=args.max_minutes, progress=not args.quiet)
    print(result.summary())
    _record_by_hand(paths, "train", started, TrainFigures.of(result, spec.train.epochs))


def _not_while_a_job_runs(paths, stage: str) -> None:
    """A stage run by hand on a managed run must not race that run's own job."""
    from ..errors import RunError
    from ..hpc.manifest import read

    if paths.manifest.is_file():
        record = read(paths).stages[stage]
        if record.state in ("queued", "running"):
            raise RunError(f"{paths.root.name}: {stage} is {record.state} as job {record.job_id}; "
                           f"wait for it or nervi-hpc cancel {paths.root.name} first")


def _record_by_hand(paths, stage: str, started: float, figures) -> None:
    """Keep a managed run's record (manifest.json) in step with a stage run by hand."""
    from ..hpc import manifest

    if paths.manifest.is_file():
        manifest.update(paths, lambda m: m.ran_by_hand(stage, started, figures))


def cmd_decode(args) -> None:
    from ..errors import ParameterError
    from ..parameters import parse_assignments, read_params_csv
    from ..stages.decode.decoder import Decoder, unseen_notes
    from ..stages.decode.outputs import write_outputs

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
    from ..units import human_bytes, human_duration
    from ..stages.decode.decoder import Decoder
    from ..viewer.archives import archive_facts

    facts = archive_facts(Path(args.archive), Decoder.open(args.archive, device="cpu"))
    if args.json:
        print_json(facts)
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
    peak = f", peak lr {t['peak_lr']:.2g}" if t.get("peak_lr") else ""
    print(f"  trained: {t.get('epochs')} epochs{planned}{how}, {t.get('steps')} steps{peak} in "
          f"{human_duration(t.get('seconds'))}; training PSNR "
          + (f"{t['psnr']:.2f} dB" if t.get("psnr") is not None else "n/a")
          + (f"; evaluated PSNR {f['psnr_db']:.2f} dB" if f["psnr_from"] == "evaluation" else ""))


def cmd_eval(args) -> None:
    from ..stages.evaluate.measure import default_eval_dir, evaluate

    out = args.output or default_eval_dir(args.archive)
    result = evaluate(args.archive, args.store, out, device=args.device, batch_size=args.batch_size,
                      progress=not args.quiet)
    print(result.summary())


def cmd_compress(args) -> None:
    import time

    from .. import atomic
    from ..paths import RunPaths
    from ..stages.compress import compress
    from ..stages.figures import CompressFigures

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
    from ..bench.runner import Bench

    bench = Bench(args.spec, args.out, max_minutes=args.max_minutes, only=args.only, progress=not args.quiet)
    if args.report_only:
        bench.report()
    else:
        bench.run()


def cmd_view(args) -> None:
    from ..viewer import serve

    serve(args.archives, host=args.host, port=args.port, device=args.device,
          cache_bytes=args.cache_mb << 20, store=args.store)
