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
