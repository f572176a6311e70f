"""The `nervi-hpc` command: thin glue over the stages. Any NerviError → one line, exit 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import NerviError


def _source_from_arg(arg: str, pattern: str | None):
    """A Source from a dataset.yaml, a Cinema database folder, or an image folder + pattern."""
    from .config import CinemaSource, FolderSource, load_dataset
    from .errors import SourceError
    from .sources import open_source

    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
        return open_source(load_dataset(path).source)
    if not path.is_dir():
        raise SourceError(f"{path}: not a dataset.yaml, Cinema database or image folder")
    if pattern:
        return open_source(FolderSource(kind="folder", path=str(path), pattern=pattern))
    if (path / "data.csv").exists():
        return open_source(CinemaSource(kind="cinema", path=str(path)))
    raise SourceError(f"{path}: no data.csv (not a Cinema database); for an image folder give --pattern")


def cmd_render(args) -> None:
    from .config import SyntheticSource, load_dataset
    from .errors import ConfigError
    from .sources import open_source
    from .sources.cinema import write_cinema

    spec = load_dataset(args.spec)
    if not isinstance(spec.source, SyntheticSource):
        raise ConfigError(f"{args.spec}: source.kind is {spec.source.kind!r}; render needs a synthetic scene")
    source = open_source(spec.source)
    write_cinema(source, args.out, progress=not args.quiet)
    print(f"wrote {len(source)} images of {source.size[1]}×{source.size[0]} to {args.out}")


def cmd_ingest(args) -> None:
    from .ingest import ingest

    source = _source_from_arg(args.source, args.pattern)
    result = ingest(source, args.output, shard_size=args.shard_size, workers=args.workers,
                    progress=not args.quiet, contact_sheet=args.contact_sheet)
    print(result.summary())


def cmd_train(args) -> None:
    import shutil

    from .config import load_dataset
    from .paths import RunPaths
    from .train import train

    paths = RunPaths(Path(args.run_dir))
    if args.spec:
        load_dataset(args.spec)  # validate before copying
        paths.root.mkdir(parents=True, exist_ok=True)
        from . import atomic

        with atomic.atomic_path(paths.spec) as tmp:
            shutil.copyfile(args.spec, tmp)
    result = train(paths.root, load_dataset(paths.spec), max_minutes=args.max_minutes,
                   progress=not args.quiet)
    print(result.summary())


def cmd_decode(args) -> None:
    from .decode import (Decoder, ParameterError, parse_assignments, read_params_csv, unseen_notes,
                         write_outputs)

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
    print(write_outputs(decoder, params, args.output, archive=args.archive, progress=not args.quiet))


def cmd_eval(args) -> None:
    from .evaluate import default_eval_dir, evaluate

    out = args.output or default_eval_dir(args.archive)
    result = evaluate(args.archive, args.store, out, device=args.device, batch_size=args.batch_size,
                      progress=not args.quiet)
    print(result.summary())


def cmd_compress(args) -> None:
    from .compress import compress

    result = compress(args.run_dir, bits=args.bits, name=args.name, evaluate=not args.no_eval,
                      device=args.device, progress=not args.quiet)
    print(result.summary())
    if result.evaluation is not None:
        print(result.evaluation.summary())


def cmd_view(args) -> None:
    from .viewer import serve

    serve(args.archives, host=args.host, port=args.port, device=args.device,
          cache_bytes=args.cache_mb << 20)


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
    p.add_argument("--shard-size", type=int, help="images per shard (default: about 64 MB of pixels)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count, at most 8); "
                   "under mpiexec/srun the MPI ranks are the workers")
    p.add_argument("--contact-sheet", help="also write a contact sheet PNG of the store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_ingest)

    p = verbs.add_parser("train", help="train (or resume) NeRVI on RUN_DIR/renders.zarr, in this process")
    p.add_argument("run_dir", help="run folder holding dataset.yaml and renders.zarr")
    p.add_argument("--spec", help="copy this dataset.yaml into the run folder first")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes; "
                   "the lr schedule is fitted to the budget")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = verbs.add_parser("decode", help="decode images from a .nervi archive (one, a list, or the whole grid)")
    p.add_argument("archive", help="the .nervi archive")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a parameter value of a single image; repeat it for each parameter (e.g. --param theta=45)")
    p.add_argument("--params-file", help="CSV whose header names the parameters, one image per row")
    p.add_argument("--all", action="store_true", help="every image of the training grid")
    p.add_argument("-o", "--output", required=True,
                   help="IMG.png (one image), OUT.zarr (a renders store) or a folder (PNGs named by parameters)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: about 4 M pixels)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_decode)

    p = verbs.add_parser("eval", help="decode every image of a store from an archive; report quality, size, speed")
    p.add_argument("archive", help="the .nervi archive")
    p.add_argument("--store", required=True, help="the renders.zarr the archive was trained on")
    p.add_argument("-o", "--output",
                   help="report folder (default: RUN/eval/ for RUN/archive/X.nervi, else X-eval/ beside X)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: about 4 M pixels)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_eval)

    p = verbs.add_parser("compress", help="latest checkpoint of RUN_DIR → archive/<name>.nervi → eval/")
    p.add_argument("run_dir", help="run folder holding checkpoints/ and renders.zarr")
    p.add_argument("--bits", type=int, default=9, help="quantization bits (default 9)")
    p.add_argument("--name", help="archive name (default: the dataset's name)")
    p.add_argument("--no-eval", action="store_true", help="write the archive only")
    p.add_argument("--device", help="evaluation device: cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_compress)

    p = verbs.add_parser("view", help="explore archives in the browser: a local web viewer decoding on the fly")
    p.add_argument("archives", nargs="+", metavar="ARCHIVE", help="one or more .nervi archives (e.g. IR and DVR)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--cache-mb", type=int, default=256, help="encoded frames kept per archive, in MB (default 256)")
    p.set_defaults(run=cmd_view)
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
