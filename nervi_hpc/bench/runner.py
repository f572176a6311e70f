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
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .. import atomic
from ..codec.quantize import DEFAULT_BITS
from ..config import DatasetSpec, TrainSpec, build, check, load_dataset, read_yaml, to_dict
from ..errors import ConfigError
from ..model import checkpoint
from . import baselines, rd

NEAR = 0.05   # a point within 5 % of a target CR stands for it when the target lies just outside a curve


def _label(v) -> bool:
    return bool(v) and all(c.isalnum() or c in "-_." for c in v)


LABEL = check(_label, "letters, digits, '-', '_' or '.'")


@dataclass(frozen=True)
class NerviVariant:
    """One nervi-hpc configuration: a training run per target CR."""

    label: str = field(metadata=LABEL)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    target_cr: list[float] | None = field(default=None, metadata=check(
        lambda v: v is None or (v and all(x > 1 for x in v)), "a non-empty list of numbers > 1"))
    max_minutes: float | None = field(default=None, metadata=check(lambda v: v is None or v > 0,
                                                                   "a positive number of minutes"))
    bits: list[int] | None = field(default=None, metadata=check(
        lambda v: v is None or (v and all(2 <= b <= 16 for b in v)), "a non-empty list of bit counts in 2..16"))
    prune: list[float] = field(default_factory=list, metadata=check(
        lambda v: all(0 < p < 1 for p in v), "fractions in (0, 1)"))

    def __post_init__(self):
        if "target_cr" in self.model:
            raise ConfigError(f"{self.label}: model.target_cr: give the values in the variant's own target_cr list")

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(setting, model section) of each training run."""
        if self.target_cr is None:
            return [("model", dict(self.model))]
        return [(f"cr{cr:g}", {**self.model, "target_cr": cr}) for cr in self.target_cr]

    @property
    def own_bits(self) -> int:
        """The bits the run is sized and trained for (model.bits, default 9)."""
        return self.model.get("bits", DEFAULT_BITS)

    def archives(self) -> list[tuple[str, int, float | None]]:
        """(method, bits, prune fraction) of each archive written from a run's checkpoint (by
        default one at the run's own bits, whose method is the label)."""
        return [(self.label + ("" if b == self.own_bits else f"-b{b}") + ("" if p is None else f"-p{p:g}"), b, p)
                for b in self.bits or [self.own_bits] for p in (None, *self.prune)]


@dataclass(frozen=True)
class BaselineEntry:
    """One codec, optionally under its own label, with its own sweep and options."""

    codec: str
    label: str | None = field(default=None, metadata=check(lambda v: v is None or _label(v),
                                                           "letters, digits, '-', '_' or '.'"))
    sweep: list[float] | None = field(default=None, metadata=check(lambda v: v is None or len(v) > 0,
                                                                   "a non-empty list"))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchSpec:
    """A bench spec (see the module docstring)."""

    dataset: str | None = None
    store: str | None = None
    nervi: list[NerviVariant] = field(default_factory=list)
    baselines: list[Any] | None = None   # codec names or BaselineEntry mappings; None: every codec
    threads: int | None = field(default=None, metadata=check(lambda v: v is None or v > 0, "a positive count"))

    def __post_init__(self):
        if self.dataset is None and self.store is None:
            raise ConfigError("give dataset: (a dataset.yaml to render and ingest) or store: (a renders store)")
        if self.nervi and self.dataset is None:
            raise ConfigError("nervi: variants train with a dataset's settings; give dataset: as well")


@dataclass(frozen=True)
class Task:
    """One point of the bench: its result folder and how to make it."""

    label: str                      # the spec's label it belongs to (--only selects by it)
    method: str
    setting: str
    kind: str                       # "nervi" or "codec"
    make: Callable[[Path], None]    # writes OUT/results/<method>/<setting>/


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
            return dataclasses.replace(self.dataset, model=model, train=build(TrainSpec, train, "train"))
        except ConfigError as e:
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
            figures = json.loads((out / "summary.json").read_text())
            self.say(f"{task.method} {task.setting}: CR {figures['compression_ratio']:.1f}, "
                     f"PSNR {_cell(figures['psnr_db']['mean'])} dB "
                     f"(foreground {_cell(figures['foreground_psnr_db']['mean'])} dB)")
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
                points.append(rd.Point.from_summary(task.method, task.setting, task.kind,
                                                    json.loads(summary.read_text())))
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
                figures = json.loads(summary.read_text())
                when = json.loads((summary.parent / "snapshot.json").read_text())
                curve.append(rd.TimePoint(run, when["minutes"], when["cpu_minutes"], when["epochs"],
                                          figures["compression_ratio"], figures["psnr_db"]["mean"],
                                          figures["foreground_psnr_db"]["mean"]))
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


def near_cr(pairs: list[tuple[float, float | None]], target: float) -> dict[str, Any] | None:
    """{"value", "cr", "nearest"}: the quality at `target` interpolated along the curve, or,
    when `target` lies outside it but within NEAR of its nearest point, that point's value
    (nearest true); None otherwise."""
    value = rd.at_cr(pairs, target)
    if value is not None:
        return {"value": value, "cr": target, "nearest": False}
    known = [(cr, q) for cr, q in pairs if q is not None]
    if not known:
        return None
    cr, q = min(known, key=lambda point: abs(math.log(point[0] / target)))
    if abs(cr / target - 1) <= NEAR:
        return {"value": q, "cr": cr, "nearest": True}
    return None


def _cell(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _near_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    return f"{entry['value']:.2f}" + (f" (at {entry['cr']:.0f})" if entry["nearest"] else "")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def markdown(spec_path: Path, store: dict[str, Any], points: list[rd.Point], table: dict, bd: dict,
             missing: list[Task]) -> str:
    methods = list(table)
    kinds = {p.method: p.kind for p in points}
    targets = [str(t) for t in rd.TARGET_CRS]
    lines = [f"# Rate–distortion benchmark: {spec_path.name}", "",
             f"{store['images']} images of {store['width']}×{store['height']} (`{store['path']}`). "
             f"CR = N·H·W·3 / bytes. Values at a CR are interpolated linearly in log CR between a "
             f"method's two points around it; where the CR lies just outside a method's points, the "
             f"nearest point within {NEAR:.0%} stands for it (its CR in brackets); — : out of reach.", ""]
    for key, name in (("psnr", "PSNR (dB, whole image)"), ("foreground_psnr", "Foreground PSNR (dB)")):
        lines += [f"## {name} at CR ≈ {' / '.join(targets)}", "",
                  "| method | kind | " + " | ".join(f"CR {t}" for t in targets) + " |",
                  "|---|---|" + "---|" * len(targets)]
        lines += [f"| {m} | {kinds[m]} | " + " | ".join(_near_cell(table[m][t][key]) for t in targets) + " |"
                  for m in methods]
        lines.append("")
    if any(bd.values()):  # nervi methods and codecs both measured
        codecs = list(next(iter(bd.values())))
        for key, name in (("psnr", "whole-image PSNR"), ("foreground_psnr", "foreground PSNR")):
            lines += [f"## BD-rate of nervi-hpc against each codec ({name})", "",
                      "Bjøntegaard delta rate (VCEG-M33): the mean change in bytes nervi-hpc needs for the "
                      "same PSNR, over the PSNR range both cover; negative = nervi-hpc is smaller. — : fewer "
                      "than two points, or no common PSNR range.", "",
                      "| nervi method | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]
            lines += [f"| {n} | " + " | ".join(_percent(bd[n][c][key]) for c in codecs) + " |" for n in bd]
            lines.append("")
    lines += ["## Points", "", "| method | setting | CR | PSNR | foreground PSNR | MS-SSIM | encode s | decode s |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.method} | {p.setting} | {p.cr:.1f} | {_cell(p.psnr)} | {_cell(p.foreground_psnr)} | "
              f"{_cell(p.ms_ssim, '.4f')} | {_cell(p.encode_seconds, '.1f')} | {_cell(p.decode_seconds, '.2f')} |"
              for p in sorted(points, key=lambda p: (p.method, p.cr))]
    lines.append("")
    if missing:
        lines += [f"Not run yet: {', '.join(f'{t.method} {t.setting}' for t in missing)}.", ""]
    lines += ["Plots: `rd-psnr.png` (whole-image and foreground PSNR vs CR), `rd-msssim.png`.", ""]
    return "\n".join(lines)


def time_markdown(curves: dict[str, list[rd.TimePoint]], codec_lines: dict[str, dict[str, float]]) -> str:
    """The PSNR-vs-training-time table of each run with snapshots ("" when there are none)."""
    if not curves:
        return ""
    lines = ["## PSNR against training time", "",
             "The archive (quantized, entropy-coded, decoded) of each snapshot of the weights "
             "(`train.snapshot_minutes`); the codecs' PSNR at the run's final CR beside it (`rd-time.png`).", ""]
    for run, curve in curves.items():
        codecs = ", ".join(f"{c} {v:.2f} dB" for c, v in codec_lines.get(run, {}).items()) or "no codec reaches it"
        lines += [f"### {run} (CR {curve[-1].cr:.0f}; codecs at this CR: {codecs})", "",
                  "| minutes | CPU minutes | epochs | CR | PSNR | foreground PSNR |", "|---|---|---|---|---|---|"]
        lines += [f"| {p.minutes:.1f} | {p.cpu_minutes:.1f} | {p.epochs} | {p.cr:.1f} | {_cell(p.psnr)} | "
                  f"{_cell(p.foreground_psnr)} |" for p in curve]
        lines.append("")
    return "\n".join(lines)
