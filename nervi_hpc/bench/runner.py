"""`nervi-hpc bench SPEC.yaml`: nervi-hpc against standard codecs on one collection.

A bench spec (jobs/bench/*.yaml) names the collection (`dataset:`, rendered and ingested into
OUT/store.zarr when missing, or `store:`, an existing renders store), nervi-hpc variants and
baseline codecs (nervi_hpc.bench.baselines):

    dataset: ../examples/tornado-ir.yaml     # paths are relative to the spec
    nervi:
      - label: default
        model: {}                    # the dataset's model: section is replaced by this one
        train: {mask_loss: l1}       # overrides of the dataset's train: section
        target_cr: [100, 300, 700]   # one training run per value (model.target_cr); omit: the model as given
        max_minutes: 10              # training time per run
        bits: [9]                    # archives of the same checkpoint at these bits (default: model.bits, else 9)
        prune: []                    # also archives with these fractions of weights pruned
    baselines:                       # omitted: every codec with its default sweep
      - h264
      - {codec: h264, label: h264-420, options: {chroma: "420"}, sweep: [20, 30, 40]}

Each variant × target_cr trains in OUT/runs/<label>-cr<N>/ (renders.zarr is a link to the shared
store); each archive or codec setting is evaluated into OUT/results/<method>/<setting>/
(summary.json as `nervi-hpc eval`), where a nervi method is the label with `-b<bits>` (bits other
than the run's model.bits) and `-p<fraction>` (pruned) appended, and its setting `cr<N>`. Whatever is finished is
skipped on a re-run, so a bench killed halfway resumes. Last, the report: OUT/results.json (every
point), OUT/results.md (PSNR and foreground PSNR at CR ≈ 100/300/700/1000, BD-rates of each
nervi method against each codec, the raw points) and OUT/rd-psnr.png, OUT/rd-msssim.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .. import atomic
from ..config import DatasetSpec, TrainSpec, load_dataset
from ..errors import ConfigError, ModelError
from ..model import checkpoint
from ..model.spec import ModelSpec
from ..schema import build, read_yaml, to_dict
from ..stages.evaluate.summary import Headline
from . import baselines, rd
from .report import cell, markdown, near_cr, time_markdown
from .spec import BaselineEntry, BenchSpec, NerviVariant, Task


class Bench:
    """A loaded bench spec and its output folder."""

    def __init__(self, spec_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 max_minutes: float | None = None, only: list[str] | None = None, progress: bool = False,
                 say: Callable[[str], object] = print):
        self.spec_path = Path(spec_path)
        raw = read_yaml(self.spec_path)
        try:
            self.spec = build(BenchSpec, raw)
        except ConfigError as e:
            raise ConfigError(f"{self.spec_path}: {e}") from None
        self.out = Path(out) if out is not None else Path("bench") / self.spec_path.stem
        self.max_minutes, self.progress, self.say = max_minutes, progress, say
        here = self.spec_path.parent
        self.dataset_path = here / self.spec.dataset if self.spec.dataset else None
        self.store_path = here / self.spec.store if self.spec.store else self.out / "store.zarr"
        self.dataset = load_dataset(self.dataset_path) if self.dataset_path else None
        for variant in self.spec.nervi:
            self.run_spec(variant, variant.model)
        self.codecs = self._codecs()
        labels = [v.label for v in self.spec.nervi] + [label for label, *_ in self.codecs]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"{self.spec_path}: label {repeated[0]!r} is used twice")
        unknown = sorted(set(only or ()) - set(labels))
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: no such label in {self.spec_path} ({', '.join(labels)})")
        self.only = set(only) if only else None

    # --- the spec ---------------------------------------------------------------------------

    def run_spec(self, variant: NerviVariant, model: dict[str, Any]) -> DatasetSpec:
        """The dataset.yaml of one training run: the dataset's, with the variant's model and train."""
        train = {**to_dict(self.dataset.train), **variant.train}
        minutes = self.max_minutes or variant.max_minutes
        if minutes is not None:
            train["max_minutes"] = minutes
        try:
            return dataclasses.replace(self.dataset, model=ModelSpec.parse(model),
                                       train=build(TrainSpec, train, "train"))
        except (ConfigError, ModelError) as e:
            raise ConfigError(f"{self.spec_path}: nervi {variant.label}: {e}") from None

    def _codecs(self) -> list[tuple[str, baselines.Codec, tuple[float, ...], Any]]:
        """(label, codec, sweep, options) of each baseline."""
        entries = self.spec.baselines if self.spec.baselines is not None else list(baselines.CODECS)
        found = []
        for i, raw in enumerate(entries):
            where = f"baselines[{i}]"
            try:
                entry = BaselineEntry(codec=raw) if isinstance(raw, str) else build(BaselineEntry, raw, where)
                codec = baselines.codec(entry.codec)
                options = build(codec.Options, entry.options, f"{where}.options")
            except ConfigError as e:
                message = str(e) if str(e).startswith(where) else f"{where}: {e}"
                raise ConfigError(f"{self.spec_path}: {message}") from None
            found.append((entry.label or entry.codec, codec, tuple(entry.sweep or codec.sweep), options))
        return found

    # --- the work -----------------------------------------------------------------------------

    def result_dir(self, method: str, setting: str) -> Path:
        return self.out / "results" / method / setting

    def run_dir(self, label: str, setting: str) -> Path:
        """The training run of a nervi variant's label and setting."""
        return self.out / "runs" / (label if setting == "model" else f"{label}-{setting}")

    def tasks(self) -> Iterator[Task]:
        """Every point of the bench, nervi runs first (each run's archives together)."""
        for variant in self.spec.nervi:
            for setting, model in variant.runs():
                run_dir = self.run_dir(variant.label, setting)
                for method, bits, fraction in variant.archives():
                    yield Task(variant.label, method, setting, "nervi",
                               lambda out, v=variant, m=model, r=run_dir, n=method, b=bits, p=fraction:
                               self._nervi(v, m, r, n, b, p, out))
        for label, codec, sweep, options in self.codecs:
            for value in sweep:
                yield Task(label, label, codec.setting(value), "codec",
                           lambda out, c=codec, v=value, o=options, n=label:
                           baselines.run(c, self._store(), v, out, options=o, label=n, threads=self.spec.threads))

    def run(self) -> None:
        """Make every selected point not made yet, then write the report."""
        for task in self.tasks():
            out = self.result_dir(task.method, task.setting)
            if self.only is not None and task.label not in self.only:
                continue
            if (out / "summary.json").is_file():
                self.say(f"skip {task.method} {task.setting}: done")
                continue
            self.say(f"{task.method} {task.setting} …")
            task.make(out)
            h = Headline.read(out / "summary.json")
            self.say(f"{task.method} {task.setting}: CR {h.compression_ratio:.1f}, PSNR {cell(h.psnr)} dB "
                     f"(foreground {cell(h.foreground_psnr)} dB)")
        self.report()

    def _store(self):
        """The collection's store, rendered and ingested first when it is missing."""
        from ..data.store import RenderStore

        if not self.store_path.exists() and self.spec.store is None:
            from ..data.sources import open_source
            from ..stages.ingest.run import ingest

            self.say(f"render + ingest {self.dataset_path} → {self.store_path}")
            ingest(open_source(self.dataset.source), self.store_path, shard_size=self.dataset.ingest.shard_size,
                   workers=self.dataset.ingest.workers, progress=self.progress)
        return RenderStore.open(self.store_path)

    def _nervi(self, variant: NerviVariant, model: dict[str, Any], run_dir: Path, method: str, bits: int,
               fraction: float | None, out: Path) -> None:
        """Train the run (unless trained), write the archive and evaluate it into `out`."""
        from ..paths import RunPaths
        from ..stages.compress import compress
        from ..stages.evaluate.measure import evaluate
        from ..stages.train import train

        store = self._store()
        paths = RunPaths(run_dir)
        marker = run_dir / "trained.json"
        if not marker.is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            if not paths.store.is_symlink():
                paths.store.symlink_to(store.path.resolve(), target_is_directory=True)
            spec = self.run_spec(variant, model)
            atomic.write_text(paths.spec, yaml.safe_dump(to_dict(spec), sort_keys=False))
            self.say(f"train {run_dir.name}")
            result = train(run_dir, spec, progress=self.progress)
            atomic.write_text(marker, json.dumps(asdict(result), indent=2) + "\n")
            self.say(f"  {result.summary()}")
        if bits == variant.own_bits and fraction is None:
            for snapshot in checkpoint.complete_steps(paths.snapshots):
                where = out / "time" / snapshot.name
                if not (where / "summary.json").is_file():
                    state, _ = checkpoint.load(snapshot)
                    atomic.write_text(where / "snapshot.json", json.dumps(
                        {"minutes": state["seconds"] / 60, "cpu_minutes": state.get("cpu_seconds", 0.0) / 60,
                         "epochs": state["epoch"]}) + "\n")
                    archive = compress(run_dir, name=f"{method}-{snapshot.name}", evaluate=False,
                                       source=snapshot).archive
                    evaluate(archive, paths.store, where, progress=self.progress)
        archive = compress(run_dir, bits=bits, name=method, evaluate=False, prune=fraction).archive
        evaluate(archive, paths.store, out, progress=self.progress)

    # --- the report ---------------------------------------------------------------------------

    def points(self) -> tuple[list[rd.Point], list[Task]]:
        """The measured points of the spec's tasks, and the tasks not made yet."""
        points, missing = [], []
        for task in self.tasks():
            summary = self.result_dir(task.method, task.setting) / "summary.json"
            if summary.is_file():
                points.append(rd.Point.from_summary(task.method, task.setting, task.kind, Headline.read(summary)))
            else:
                missing.append(task)
        return points, missing

    def report(self) -> None:
        """results.json, results.md, rd-psnr.png and rd-msssim.png from the results on disk."""
        points, missing = self.points()
        if not points:
            raise ConfigError(f"{self.out / 'results'}: no results yet; run the bench first")
        methods = list(dict.fromkeys(p.method for p in points))
        kind = {p.method: p.kind for p in points}
        curves = {m: [p for p in points if p.method == m] for m in methods}
        table = {m: {str(t): {"psnr": near_cr([(p.cr, p.psnr) for p in c], t),
                              "foreground_psnr": near_cr([(p.cr, p.foreground_psnr) for p in c], t)}
                     for t in rd.TARGET_CRS} for m, c in curves.items()}
        nervi = [m for m in methods if kind[m] == "nervi"]
        codecs = [m for m in methods if kind[m] == "codec"]
        bd = {n: {c: {"psnr": rd.bd_rate([(p.cr, p.psnr) for p in curves[n]], [(p.cr, p.psnr) for p in curves[c]]),
                      "foreground_psnr": rd.bd_rate([(p.cr, p.foreground_psnr) for p in curves[n]],
                                                    [(p.cr, p.foreground_psnr) for p in curves[c]])}
                  for c in codecs} for n in nervi}
        first = self.result_dir(points[0].method, points[0].setting) / "summary.json"
        store = {**json.loads(first.read_text())["store"], "path": str(self.store_path.resolve())}
        curves_in_time, codec_lines = self.time_curves(points)
        results = {"spec": str(self.spec_path), "store": store, "points": [asdict(p) for p in points],
                   "at_cr": table, "bd_rate_percent": bd,
                   "in_time": {run: [asdict(p) for p in curve] for run, curve in curves_in_time.items()},
                   "codecs_at_run_cr": codec_lines,
                   "missing": [f"{t.method}/{t.setting}" for t in missing]}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
        atomic.write_text(self.out / "results.md", markdown(self.spec_path, store, points, table, bd, missing)
                          + time_markdown(curves_in_time, codec_lines))
        title = f"{self.spec_path.stem}: {store['images']} images {store['width']}x{store['height']}"
        rd.plot(points, self.out / "rd-psnr.png", "psnr", title)
        rd.plot(points, self.out / "rd-msssim.png", "ms_ssim", title)
        if curves_in_time:
            rd.plot_time(curves_in_time, codec_lines, self.out / "rd-time.png", title)
        self.say(f"report: {self.out / 'results.md'}, {self.out / 'rd-psnr.png'}, {self.out / 'rd-msssim.png'}"
                 + (f", {self.out / 'rd-time.png'}" if curves_in_time else ""))

    def time_curves(self, points: list[rd.Point]) -> tuple[dict[str, list[rd.TimePoint]], dict[str, dict[str, float]]]:
        """Each nervi run's snapshot archives ({"method setting": points}), and each codec's PSNR
        at that run's final CR ({"method setting": {codec: dB}}), for rd-time.png."""
        curves, lines = {}, {}
        codecs = {p.method for p in points if p.kind == "codec"}
        for point in points:
            folder = self.result_dir(point.method, point.setting) / "time"
            if point.kind != "nervi" or not folder.is_dir():
                continue
            run = f"{point.method} {point.setting}"
            curve = []
            for summary in sorted(folder.glob("*/summary.json")):
                h = Headline.read(summary)
                when = json.loads((summary.parent / "snapshot.json").read_text())
                curve.append(rd.TimePoint(run, when["minutes"], when["cpu_minutes"], when["epochs"],
                                          h.compression_ratio, h.psnr, h.foreground_psnr))
            final = checkpoint.latest(self.run_dir(point.method, point.setting) / "checkpoints")
            if final is not None:  # the run's end: the archive the point itself measured
                state, _ = checkpoint.load(final)
                curve.append(rd.TimePoint(run, state["seconds"] / 60, state.get("cpu_seconds", 0.0) / 60,
                                          int(state["epoch"]), point.cr, point.psnr, point.foreground_psnr))
            if curve:
                curves[run] = sorted(curve, key=lambda p: p.minutes)
                lines[run] = {c: v for c in sorted(codecs)
                              if (v := rd.at_cr([(p.cr, p.psnr) for p in points if p.method == c], point.cr)) is not None}
        return curves, lines
