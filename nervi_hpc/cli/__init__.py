"""The `nervi-hpc` command: thin glue over the stages. Any NerviError → one line, exit 1.

The argument tree is here; the commands are in stage_commands (one stage by hand, archives) and
run_commands (runs in shared storage)."""

from __future__ import annotations

import argparse
import sys

from ..errors import NerviError
from .run_commands import (cmd_cancel, cmd_fetch, cmd_list, cmd_logs, cmd_resume, cmd_status, cmd_submit,
                           cmd_watch)
from .stage_commands import (cmd_bench, cmd_compress, cmd_decode, cmd_eval, cmd_info, cmd_ingest, cmd_render,
                             cmd_train, cmd_view)


def _decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--batch-size", type=int,
                   help="images per forward pass (default: about 4 M pixels on a GPU, 256 k on a CPU)")
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
