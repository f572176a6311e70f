"""The archives a viewer shows: each opened once (model built, frame service started), named by
a URL-safe id, described by the facts of its header and, where present, of its evaluation."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..codec.archive import compression_ratio
from ..data.store import RenderStore
from ..errors import ParameterError
from ..stages.decode.decoder import Decoder
from ..stages.evaluate.measure import default_eval_dir
from .frames import DEFAULT_CACHE_BYTES, FrameService


@dataclass
class ViewedArchive:
    """One archive being viewed: its id in URLs, decoder, frame service and facts."""

    id: str
    path: Path
    decoder: Decoder
    frames: FrameService

    @classmethod
    def open(cls, archive_id: str, path: str | os.PathLike, *, device=None,
             cache_bytes: int = DEFAULT_CACHE_BYTES, truth: RenderStore | None = None) -> ViewedArchive:
        """Open the archive; `truth` (a renders store) is its ground truth where it holds this
        archive's parameters and image size (IR and DVR archives may share one --store)."""
        decoder = Decoder.open(path, device=device)
        meta = decoder.meta
        if truth is not None and (truth.param_names, truth.height, truth.width) != (meta.names, meta.height, meta.width):
            truth = None
        return cls(archive_id, Path(path), decoder, FrameService(decoder, cache_bytes=cache_bytes, truth=truth))

    @property
    def grids(self) -> list[tuple[float, ...]]:
        return [p.grid for p in self.decoder.meta.parameters]

    def row(self, query: dict[str, list[str]]) -> tuple[float, ...]:
        """The parameter row named by a parsed query string: each parameter exactly once, as a
        finite number; ParameterError otherwise (range checks are the frame service's)."""
        names = self.decoder.names
        unknown = sorted(set(query) - set(names))
        if unknown:
            raise ParameterError(f"unknown parameter {unknown[0]!r} (this archive's: {', '.join(names)})")
        values = []
        for name in names:
            given = query.get(name)
            if not given:
                raise ParameterError(f"missing parameter {name!r} (this archive's: {', '.join(names)})")
            if len(given) > 1:
                raise ParameterError(f"parameter {name!r} given {len(given)} times")
            try:
                value = float(given[0])
            except ValueError:
                raise ParameterError(f"{name}={given[0][:40]!r} is not a number") from None
            if not math.isfinite(value):
                raise ParameterError(f"{name}={given[0][:40]!r} is not a finite number")
            values.append(value)
        return tuple(values)

    def facts(self) -> dict[str, Any]:
        """What the page shows about the archive (`archive_facts`), with its id and device."""
        return {"id": self.id, **archive_facts(self.path, self.decoder), "device": str(self.decoder.device),
                "truth": self.frames.truth is not None}

    def close(self) -> None:
        self.frames.close()


def archive_facts(path: Path, decoder: Decoder) -> dict[str, Any]:
    """What a recipient wants to know of an archive (the viewer's panel, `nervi-hpc info`): from
    its header and file size, plus PSNR from the evaluation beside it (eval/summary.json of this
    very file), else from training."""
    meta, info = decoder.meta, decoder.info
    file_bytes = path.stat().st_size
    evaluated = evaluation_psnr(path, file_bytes)
    training_psnr = meta.training.get("psnr")
    psnr_from = "evaluation" if evaluated is not None else "training" if training_psnr is not None else None
    return {
        "name": path.stem,
        "file": path.name,
        "mode": meta.mode,
        "source": meta.source,
        "dataset": meta.training.get("dataset"),
        "count": meta.count,
        "height": meta.height,
        "width": meta.width,
        "background": list(meta.background),
        "bytes": file_bytes,
        "compression_ratio": compression_ratio(meta.count, meta.height, meta.width, file_bytes),
        "bits": meta.bits,
        "weights": info.parameter_count if info else None,
        "bits_per_weight": info.bits_per_parameter if info else None,
        "psnr_db": evaluated if evaluated is not None else training_psnr,
        "psnr_from": psnr_from,
        "training": dict(meta.training),
        "model": {"arch": meta.model.arch, "c1": meta.model.c1, "c2": meta.model.c2,
                  "grid_features": meta.model.grid_features, "periodic": list(meta.model.periodic),
                  "composite": meta.model.composite},
        "parameters": [{"name": p.name, "low": p.low, "high": p.high, "grid": list(p.grid), "period": period}
                       for p, period in zip(meta.parameters, decoder.periods())],
    }


def evaluation_psnr(archive: Path, file_bytes: int) -> float | None:
    """Mean PSNR from the evaluation written beside `archive` (a run's eval/, X-eval/, or the
    X.summary.json that fetch writes), when that evaluation is of this file (same name and size):
    a run's eval/ may hold the report of another archive."""
    for report in (default_eval_dir(archive) / "summary.json", archive.with_name(f"{archive.stem}.summary.json")):
        try:
            summary = json.loads(report.read_text())
            evaluated, psnr = summary["archive"], summary["psnr_db"]["mean"]
            same = Path(evaluated["path"]).name == archive.name and evaluated["bytes"] == file_bytes
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same and isinstance(psnr, (int, float)) and math.isfinite(psnr):
            return float(psnr)
    return None


def archive_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct URL-safe id per archive, from its file name (`demo`, `demo-2`, …)."""
    ids: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-.") or "archive"
        name, n = base, 1
        while name in ids:
            n += 1
            name = f"{base}-{n}"
        ids.append(name)
    return ids

