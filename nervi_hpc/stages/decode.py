"""Decode images from a `.nervi` archive: its metadata, the model it holds, batched inference.

`ArchiveMeta` is the archive header's `meta` object (written by nervi_hpc.stages.compress, validated here
because a reader must trust nothing in a file it is handed). `Decoder.open(path)` reads the
archive once, rebuilds the network in eval mode (BatchNorm uses its running statistics) and
decodes parameter rows into uint8 images with the paper's inference rule: where the predicted
mask m̂ > 0.5 the predicted colour, elsewhere the background. On CUDA it runs under bf16
autocast in channels_last; on the CPU in float32.

Parameter values inside the trained range but off the training grid are allowed (the paper's
§4.5 interpolation) and reported as unseen; values outside the range raise ParameterError.

An archive is untrusted input, so `Decoder.open` checks everything it would cost from the header
alone, before the payload is read: the declared model (bounded field by field, built on the meta
device), its tensor shapes against the codec's, and its weight and per-frame memory against
`Limits` (environment variables raise them). A decode whose network yields a non-finite value is
an ArchiveError, never an image.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .. import __version__
from ..codec.archive import ArchiveInfo, read_archive
from ..data.dataset import normalize
from ..data.imaging import write_jpeg, write_png
from ..data.sources import MAX_IMAGES, Source
from ..errors import ArchiveError, ConfigError, ModelError, NerviError
from ..model.network import MAX_INPUTS, ModelConfig, NeRVI, composite, to_uint8

META_VERSION = 1
MAX_SIDE = 16384            # image height/width an archive may declare
MAX_PARAMETERS = MAX_INPUTS
BATCH_PIXELS = 1 << 22      # default batch: about 4 M output pixels (4 images of 1024², 64 of 256²)
MAX_BATCH = 256
GRID_TOLERANCE = 1e-9       # relative: a value this close to a grid value is on the grid
WEIGHT_BYTES = 2 + 4 + 4    # per weight while opening: its symbol, the state dict, the model
ACTIVATION_COPIES = 3       # float32 copies of an upscale block's output alive at once (conv, shuffle, norm)
MAX_ELEMENTS = 1 << 31      # torch kernels index a tensor with 32 bits: one batch's activation stays below


class ParameterError(NerviError, ValueError):
    """Decode parameters that are missing, unknown, malformed or outside the trained range."""


@dataclass(frozen=True)
class Limits:
    """What opening and decoding one archive may cost: `memory_bytes` for its weights and for
    one batch's activations; for its whole training grid (`decode --all`) `images` rows and
    `output_bytes` of decoded pixels (count × H × W × 3).

    `from_env` reads NERVI_MAX_MEMORY_MB, NERVI_MAX_IMAGES and NERVI_MAX_OUTPUT_GB, so a user with
    a large archive and a large machine can raise them without a code change.
    """

    memory_bytes: int = 4 << 30
    images: int = 1_000_000
    output_bytes: int = 64 << 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Limits:
        values = {}
        for field_name, var, unit in (("memory_bytes", "NERVI_MAX_MEMORY_MB", 1 << 20),
                                      ("images", "NERVI_MAX_IMAGES", 1),
                                      ("output_bytes", "NERVI_MAX_OUTPUT_GB", 1 << 30)):
            text = env.get(var)
            if text is None:
                continue
            if not text.strip().isdigit() or int(text) < 1:
                raise ConfigError(f"${var}: {text[:40]!r} is not a positive integer")
            values[field_name] = int(text) * unit
        return cls(**values)

    def check_model(self, meta: ArchiveMeta, skeleton: NeRVI) -> None:
        """ArchiveError when the model's weights or one image's activations exceed the budget."""
        weights = sum(t.numel() for t in skeleton.state_dict().values())
        if weights * WEIGHT_BYTES > self.memory_bytes:
            raise ArchiveError(f"meta.model: {weights:,} weights need {_gb(weights * WEIGHT_BYTES)} to open, "
                               f"over the budget of {_gb(self.memory_bytes)} (NERVI_MAX_MEMORY_MB)")
        elements = frame_elements(skeleton.config, meta.height, meta.width)
        if elements >= MAX_ELEMENTS or elements * 4 * ACTIVATION_COPIES > self.memory_bytes:
            raise ArchiveError(f"meta.image: one {meta.height}×{meta.width} image needs "
                               f"{_gb(elements * 4 * ACTIVATION_COPIES)} to decode with this model, over the "
                               f"budget of {_gb(self.memory_bytes)} (NERVI_MAX_MEMORY_MB)")

    def batch_size(self, config: ModelConfig, height: int, width: int) -> int:
        """The most images one forward pass may hold within the budget (at least 1)."""
        elements = frame_elements(config, height, width)
        return max(1, min(self.memory_bytes // (elements * 4 * ACTIVATION_COPIES),
                          (MAX_ELEMENTS - 1) // elements))


def frame_elements(config: ModelConfig, height: int, width: int) -> int:
    """The largest activation (float count) of one image: an upscale block's or the head's output."""
    h, w = config.stem
    largest = 4 * height * width
    for channels, factor in zip(config.channels(len(config.upscale)), config.upscale):
        h, w = h * factor, w * factor
        largest = max(largest, channels * h * w)
    return largest


def _gb(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------------------------
# Archive metadata


@dataclass(frozen=True)
class Parameter:
    """One input parameter: its trained range and its sorted training grid values."""

    name: str
    low: float
    high: float
    grid: tuple[float, ...]


@dataclass(frozen=True)
class ArchiveMeta:
    """What an archive says about its model and the collection it encodes.

    `points` holds the training parameter rows only when they are not the full product of the
    grids (e.g. a Cinema database with holes); otherwise the grid product is the training set.
    `training` holds plain JSON figures (epochs, steps, seconds, loss, psnr, …), or None values.
    """

    model: ModelConfig
    parameters: tuple[Parameter, ...]
    height: int
    width: int
    background: tuple[int, int, int]
    mode: str
    count: int
    bits: int
    training: dict[str, Any] = field(default_factory=dict)
    points: tuple[tuple[float, ...], ...] | None = None
    source: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def ranges(self) -> list[tuple[float, float]]:
        return [(p.low, p.high) for p in self.parameters]

    def grid(self) -> np.ndarray:
        """float64 (count, P): every training parameter row (the grid product, first name slowest)."""
        if self.points is not None:
            return np.array(self.points, dtype=np.float64).reshape(self.count, len(self.parameters))
        axes = np.meshgrid(*(np.array(p.grid, dtype=np.float64) for p in self.parameters), indexing="ij")
        return np.stack(axes, axis=-1).reshape(self.count, len(self.parameters))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": {"meta_version": META_VERSION, "producer": f"nervi-hpc {__version__}"},
            "model": self.model.to_dict(),
            "parameters": [{"name": p.name, "range": [p.low, p.high], "grid": list(p.grid)}
                           for p in self.parameters],
            "points": None if self.points is None else [list(row) for row in self.points],
            "image": {"height": self.height, "width": self.width, "background": list(self.background),
                      "mode": self.mode, "count": self.count, "source": self.source},
            "training": self.training,
            "quantization": {"bits": self.bits},
        }

    @classmethod
    def from_json(cls, raw: Any) -> ArchiveMeta:
        """Validate an archive's `meta` object; ArchiveError naming the first bad field.
        Keys this version does not know are ignored (a newer writer may add figures)."""
        meta = _object(raw, "meta")
        version = _object(meta.get("format"), "meta.format").get("meta_version")
        if type(version) is not int or not 1 <= version <= META_VERSION:
            raise ArchiveError(f"meta.format.meta_version {version!r} is not one this build reads "
                               f"(1..{META_VERSION}); upgrade nervi-hpc")
        try:
            model = ModelConfig.from_dict(meta.get("model"))
        except ModelError as e:
            raise ArchiveError(f"meta.{e}") from None
        image = _object(meta.get("image"), "meta.image")
        height, width = (_integer(image.get(k), f"meta.image.{k}", 1, MAX_SIDE) for k in ("height", "width"))
        count = _integer(image.get("count"), "meta.image.count", 1, MAX_IMAGES)
        background = image.get("background")
        if (not isinstance(background, list) or len(background) != 3
                or not all(type(v) is int and 0 <= v <= 255 for v in background)):
            raise ArchiveError(f"meta.image.background must be [r, g, b] in 0..255, got {background!r}")
        mode, source = image.get("mode"), image.get("source", "")
        if not isinstance(mode, str) or not isinstance(source, str):
            raise ArchiveError("meta.image.mode and meta.image.source must be strings")
        bits = _integer(_object(meta.get("quantization"), "meta.quantization").get("bits"),
                        "meta.quantization.bits", 1, 64)
        training = _object(meta.get("training"), "meta.training")
        parameters = _parameters(meta.get("parameters"), count)
        points = _points(meta.get("points"), parameters, count)
        return cls(model=model, parameters=parameters, height=height, width=width,
                   background=tuple(background), mode=mode, count=count, bits=bits,
                   training=training, points=points, source=source)


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ArchiveError(f"{where} must be an object")
    return value


def _integer(value, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ArchiveError(f"{where} must be an integer in {low}..{high}, got {value!r}")
    return value


def _finite_numbers(values, where: str) -> tuple[float, ...]:
    numbers = None
    if isinstance(values, list) and all(type(v) in (int, float) for v in values):
        with contextlib.suppress(OverflowError):  # JSON integers are unbounded: float(2**1100) overflows
            numbers = tuple(float(v) for v in values)
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        raise ArchiveError(f"{where} must be a list of finite numbers")
    return numbers


def _parameters(raw, count: int) -> tuple[Parameter, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PARAMETERS:
        raise ArchiveError(f"meta.parameters must be a list of 1..{MAX_PARAMETERS} parameters")
    parameters = []
    for i, entry in enumerate(raw):
        where = f"meta.parameters[{i}]"
        entry = _object(entry, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in (p.name for p in parameters):
            raise ArchiveError(f"{where}.name must be a non-empty string, distinct from the others")
        low_high = _finite_numbers(entry.get("range"), f"{where}.range")
        grid = _finite_numbers(entry.get("grid"), f"{where}.grid")
        if len(low_high) != 2 or low_high[0] > low_high[1] or not math.isfinite(low_high[1] - low_high[0]):
            raise ArchiveError(f"{where}.range must be [low, high] with low ≤ high and a finite span")
        if (not 1 <= len(grid) <= count or any(a >= b for a, b in zip(grid, grid[1:]))
                or grid[0] < low_high[0] or grid[-1] > low_high[1]):
            raise ArchiveError(f"{where}.grid must be 1..{count} increasing values inside its range")
        parameters.append(Parameter(name, *low_high, grid))
    return tuple(parameters)


def _points(raw, parameters: tuple[Parameter, ...], count: int) -> tuple[tuple[float, ...], ...] | None:
    if raw is None:
        product = math.prod(len(p.grid) for p in parameters)
        if product != count:
            raise ArchiveError(f"meta.image.count is {count} but the parameter grids hold {product} points "
                               f"(and meta.points is absent)")
        return None
    if not isinstance(raw, list) or len(raw) != count:
        raise ArchiveError(f"meta.points must be a list of {count} rows")
    rows = tuple(_finite_numbers(row, "meta.points[…]") for row in raw)
    if any(len(row) != len(parameters) for row in rows):
        raise ArchiveError(f"meta.points rows must hold {len(parameters)} values")
    values = np.array(rows, dtype=np.float64)
    low, high = np.array([[p.low, p.high] for p in parameters]).T
    if ((values < low) | (values > high)).any():
        raise ArchiveError("meta.points has a row outside the parameter ranges")
    return rows


# ----------------------------------------------------------------------------------------------
# The model


def build_model(meta: ArchiveMeta, state: Mapping[str, torch.Tensor]) -> NeRVI:
    """The network of `meta` holding the weights of `state`, in eval mode on the CPU.

    Every floating-point tensor of the network must be in `state` with its shape, finite, and
    `state` must hold nothing the network lacks. Integer buffers (BatchNorm's step counter, which
    archives drop) are optional: inference does not read them, and absent ones are zeroed. The
    check runs on a meta-device skeleton, so a forged config allocates nothing before it fails.
    """
    skeleton = model_skeleton(meta)
    check_shapes(skeleton, {k: tuple(v.shape) for k, v in state.items()})
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArchiveError(f"tensor {name!r} holds non-finite values")
        if name.endswith("running_var") and (tensor < 0).any():  # BatchNorm would take its square root
            raise ArchiveError(f"tensor {name!r}: a BatchNorm variance is negative")
    model = skeleton.to_empty(device="cpu")
    model.load_state_dict(state, strict=False)
    for name, buffer in model.named_buffers():
        if name not in state:
            buffer.zero_()
    return model.eval()


def model_skeleton(meta: ArchiveMeta) -> NeRVI:
    """The network `meta` declares, on the meta device (nothing allocated); ArchiveError when it
    cannot be built."""
    try:
        with torch.device("meta"):
            return NeRVI(meta.model, meta.height, meta.width, len(meta.parameters))
    except ModelError as e:
        raise ArchiveError(f"the archive's model cannot be built: {e}") from None
    except (ValueError, TypeError, OverflowError, RuntimeError) as e:  # what a field bound did not foresee
        raise ArchiveError(f"the archive's model cannot be built ({type(e).__name__}: {e})") from None


def check_shapes(skeleton: NeRVI, given: Mapping[str, tuple[int, ...]]) -> None:
    """ArchiveError unless `given` (name → shape) holds every floating-point tensor of
    `skeleton` with its shape and nothing the network lacks."""
    known = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    needed = {k for k, v in skeleton.state_dict().items() if v.is_floating_point()}
    missing = sorted(needed - set(given))
    extra = sorted(set(given) - set(known))
    wrong = sorted(k for k in set(known) & set(given) if known[k] != given[k])
    if missing or extra or wrong:
        problems = [f"{label} {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
                    for label, names in (("lacks", missing), ("has unknown tensors", extra),
                                         ("has wrong shapes for", wrong)) if names]
        raise ArchiveError(f"the weights do not fit the model: it {'; '.join(problems)}")


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when present, else the CPU; ConfigError for a bad or absent device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: {device!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device!r} asked for, but CUDA is not available here")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device: {device!r} asked for, but there are {torch.cuda.device_count()} GPU(s)")
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: {device!r} is not supported (use cpu or cuda)")
    return chosen


def default_batch_size(height: int, width: int) -> int:
    """About BATCH_PIXELS output pixels per batch, 1..MAX_BATCH images."""
    return max(1, min(MAX_BATCH, BATCH_PIXELS // (height * width)))


# ----------------------------------------------------------------------------------------------
# Decoding


class Decoder:
    """Decodes parameter rows of one archive into images, a batch at a time.

    Build it with `Decoder.open(path)`; the constructor takes a model already built (for tests
    and benchmarks that decode a model held in memory).
    """

    def __init__(self, model: NeRVI, meta: ArchiveMeta, *, device: str | torch.device | None = None,
                 batch_size: int | None = None, info: ArchiveInfo | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        largest = self.limits.batch_size(model.config, meta.height, meta.width)
        if batch_size is not None and not 1 <= batch_size <= largest:
            raise ConfigError(f"--batch-size: must be an integer in 1..{largest} for this archive "
                              f"(memory budget NERVI_MAX_MEMORY_MB), got {batch_size}")
        self.meta = meta
        self.info = info
        self.device = pick_device(device)
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batch_size = batch_size or min(default_batch_size(meta.height, meta.width), largest)
        self.where = str(info.path) if info else "the model"

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | torch.device | None = None,
             batch_size: int | None = None, limits: Limits | None = None) -> Decoder:
        """Read the archive at `path` (once) and build its model; ArchiveError naming the file."""
        limits = limits or Limits.from_env()
        declared = []

        def check(header: dict) -> None:  # before the payload is read or decoded
            meta = ArchiveMeta.from_json(header["meta"])
            if meta.bits != header["codec"]["bits"]:
                raise ArchiveError(f"meta says {meta.bits}-bit quantization, the codec {header['codec']['bits']}")
            skeleton = model_skeleton(meta)
            limits.check_model(meta, skeleton)
            check_shapes(skeleton, {t["name"]: tuple(t["shape"]) for t in header["codec"]["tensors"]})
            declared.append(meta)

        _, state, info = read_archive(path, check)
        try:
            model = build_model(declared[0], state)
        except ArchiveError as e:
            raise ArchiveError(f"{path}: {e}") from None
        return cls(model, declared[0], device=device, batch_size=batch_size, info=info, limits=limits)

    @property
    def names(self) -> tuple[str, ...]:
        return self.meta.names

    @property
    def precision(self) -> str:
        """The arithmetic of inference: bf16 autocast on CUDA, float32 on the CPU."""
        return "bfloat16 autocast" if self.cuda else "float32"

    def grid(self) -> np.ndarray:
        """float64 (count, P): the training parameter rows; ArchiveError when they are more than
        `limits.images` or their pixels more than `limits.output_bytes`."""
        meta, limits = self.meta, self.limits
        if meta.count > limits.images:
            raise ArchiveError(f"{self.where}: declares {meta.count:,} images, more than the "
                               f"{limits.images:,} one decode may take (NERVI_MAX_IMAGES)")
        pixels = meta.count * meta.height * meta.width * 3
        if pixels > limits.output_bytes:
            raise ArchiveError(f"{self.where}: declares {meta.count:,} images of {meta.height}×{meta.width}, "
                               f"{_gb(pixels)} of pixels, more than the {_gb(limits.output_bytes)} one "
                               f"decode may write (NERVI_MAX_OUTPUT_GB)")
        return meta.grid()

    def periods(self) -> list[float | None]:
        """Each parameter's period where the model treats it as periodic (φ: 360), else None."""
        periods = self.meta.model.periods or (0.0,) * len(self.meta.parameters)
        return [span * (p.high - p.low) / 2 if span else None for span, p in zip(periods, self.meta.parameters)]

    def wrap(self, params: np.ndarray) -> np.ndarray:
        """`params` with each periodic value brought into [low, low + period): 360° and −10°
        are the views 0° and 350° of the orbit."""
        params = np.array(params, dtype=np.float64)
        if params.ndim == 2 and params.shape[1] == len(self.meta.parameters):
            for j, (p, period) in enumerate(zip(self.meta.parameters, self.periods())):
                if period is not None:
                    params[:, j] = p.low + np.mod(params[:, j] - p.low, period)
        return params

    def check(self, params: np.ndarray) -> np.ndarray:
        """Validate (n, P) parameter rows; returns a bool per row: True where some value is off
        the training grid (unseen, decoded by interpolation). ParameterError for a wrong shape,
        a non-finite value or a value outside the trained range (naming parameter, value, range);
        a periodic parameter's range is its whole period."""
        params = self.wrap(params)
        count = len(self.meta.parameters)
        if params.ndim != 2 or params.shape[1] != count:
            raise ParameterError(f"expected parameter rows of {count} values ({', '.join(self.names)}), "
                                 f"got an array of shape {params.shape}")
        unseen = np.zeros(len(params), dtype=bool)
        for j, (p, period) in enumerate(zip(self.meta.parameters, self.periods())):
            column = params[:, j]
            slack = GRID_TOLERANCE * max(p.high - p.low, abs(p.low), abs(p.high), 1.0)
            high = p.high + slack if period is None else np.inf
            bad = np.flatnonzero(~np.isfinite(column) | (column < p.low - slack) | (column > high))
            if bad.size:
                row = bad[0]
                where = f" (row {row + 1} of {len(params)})" if len(params) > 1 else ""
                raise ParameterError(f"{p.name}={column[row]:g}{where} is outside the trained range "
                                     f"[{p.low:g}, {p.high:g}]")
            grid = np.asarray(p.grid)
            above = np.searchsorted(grid, column).clip(0, len(grid) - 1)
            below = (above - 1).clip(0, len(grid) - 1)
            unseen |= np.minimum(np.abs(column - grid[below]), np.abs(column - grid[above])) > slack
        return unseen

    def describe(self, row: np.ndarray) -> str:
        """`t=3 theta=45 phi=90` for a parameter row."""
        return " ".join(f"{n}={_number(v)}" for n, v in zip(self.names, row))

    def batches(self, params: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, images uint8 (b, H, W, 3), masks uint8 (b, H, W) in {0, 1}) per batch of
        checked `params`; the mask is the model's m̂ > 0.5 (non-background pixels for NeRV)."""
        self.check(params)
        inputs = torch.from_numpy(normalize(self.wrap(params), self.meta.ranges))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        background, soft = self.meta.background, self.meta.model.soft
        for start in range(0, len(inputs), self.batch_size):
            x = inputs[start:start + self.batch_size].to(self.device)
            with torch.inference_mode(), autocast:
                output = self.model(x).float()
            if not torch.isfinite(output).all():  # forged weights: never a plausible (black) image
                raise ArchiveError(f"{self.where}: the network gives non-finite values for "
                                   f"{self.describe(params[start])} (corrupt or forged weights)")
            images = to_uint8(composite(output, background, soft))
            if output.shape[1] == 4:
                masks = (output[:, 3] > 0.5).to(torch.uint8)
            else:
                colour = torch.tensor(background, dtype=torch.uint8, device=images.device)
                masks = (images != colour).any(dim=-1).to(torch.uint8)
            yield start, images.cpu().numpy(), masks.cpu().numpy()

    def decode_with_masks(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (n, H, W, 3) and masks uint8 (n, H, W) of all `params` rows."""
        params = np.asarray(params, dtype=np.float64)
        n, h, w = len(params), self.meta.height, self.meta.width
        images = np.empty((n, h, w, 3), np.uint8)
        masks = np.empty((n, h, w), np.uint8)
        for start, batch_images, batch_masks in self.batches(params):
            images[start:start + len(batch_images)] = batch_images
            masks[start:start + len(batch_masks)] = batch_masks
        return images, masks

    def decode(self, params: np.ndarray) -> np.ndarray:
        """Images uint8 (n, H, W, 3) of (n, P) parameter rows."""
        return self.decode_with_masks(params)[0]


def unseen_notes(decoder: Decoder, params: np.ndarray, limit: int = 5) -> list[str]:
    """One line per row off the training grid (at most `limit`, then a count of the rest)."""
    unseen = decoder.check(params).nonzero()[0]
    notes = [f"{decoder.describe(params[row])} is off the training grid (unseen): decoded by interpolation"
             for row in unseen[:limit]]
    if len(unseen) > limit:
        notes.append(f"{len(unseen) - limit} more rows are off the training grid")
    return notes


def _number(value: float) -> str:
    """The shortest text that reads back as `value` (45.0 → "45", 0.1 → "0.1")."""
    return np.format_float_positional(float(value), trim="-")


# ----------------------------------------------------------------------------------------------
# Parameter input


def row_from_values(names: Sequence[str], values: Mapping[str, float], where: str = "") -> np.ndarray:
    """A parameter row in `names` order from name → value; ParameterError for a missing or an
    unknown name (`where` prefixes the message, e.g. a file and row)."""
    prefix = f"{where}: " if where else ""
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ParameterError(f"{prefix}unknown parameter {unknown[0]!r} "
                             f"(the archive's parameters: {', '.join(names)})")
    missing = [n for n in names if n not in values]
    if missing:
        raise ParameterError(f"{prefix}missing parameter {missing[0]!r} "
                             f"(the archive's parameters: {', '.join(names)})")
    return np.array([values[n] for n in names], dtype=np.float64)


def parse_assignments(names: Sequence[str], assignments: Sequence[str]) -> np.ndarray:
    """One (1, P) row from `name=value` strings (the CLI's repeated --param)."""
    values: dict[str, float] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"--param {text!r}: expected name=value, e.g. theta=45")
        if name in values:
            raise ParameterError(f"--param {name}: given twice")
        values[name] = _parse_float(value, f"--param {name}")
    return row_from_values(names, values)[None, :]


def read_params_csv(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """(n, P) rows of a CSV file whose header names the parameters (any order)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ParameterError(f"{path}: empty file; expected a header row naming "
                                     f"{', '.join(names)}")
            rows = []
            for record in reader:
                where = f"{path}: line {reader.line_num}"
                if None in record:
                    raise ParameterError(f"{where}: more values than the header has columns")
                rows.append(row_from_values(
                    names, {k.strip(): _parse_float(v, f"{where} {k.strip()}") for k, v in record.items()}, where))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ParameterError(f"{path}: cannot read the parameter list ({e})") from None
    if not rows:
        raise ParameterError(f"{path}: no parameter rows after the header")
    return np.stack(rows)


def _parse_float(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ParameterError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ParameterError(f"{where}: {text!r} is not a finite number")
    return value


# ----------------------------------------------------------------------------------------------
# Output: PNG files or a renders store


@dataclass
class ArchiveSource(Source):
    """Decoded images of an archive as a Source, so that nervi_hpc.stages.ingest writes them as a
    renders store (same schema, sharding, atomic finish). The images are passed composited, so
    the store's mask is where a decoded pixel differs from the background."""

    decoder: Decoder = field(default=None, repr=False, compare=False)
    alpha: bool = False  # pass the decoded mask as alpha (RGBA images)

    @classmethod
    def of(cls, decoder: Decoder, params: np.ndarray, description: str, alpha: bool = False) -> ArchiveSource:
        meta = decoder.meta
        return cls(names=meta.names, params=np.asarray(params, dtype=np.float64), size=(meta.height, meta.width),
                   mode=meta.mode, background=meta.background, mask_tolerance=0, description=description,
                   decoder=decoder, alpha=alpha)

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        images, masks = self.decoder.decode_with_masks(self.params[list(indices)])
        return images, masks * 255 if self.alpha else None


def png_name(names: Sequence[str], row: np.ndarray) -> str:
    """`t3_theta45_phi90.png`: readable, and an image-folder pattern `t{t}_theta{theta}_phi{phi}.png`
    reads the values back."""
    return "_".join(f"{n}{_number(v)}" for n, v in zip(names, row)) + ".png"


IMAGE_WRITERS = {".png": write_png, ".jpg": write_jpeg, ".jpeg": write_jpeg}


def png_pattern(names: Sequence[str]) -> str:
    """The image-folder pattern that reads `png_name`'s values back: `t{t}_theta{theta}_phi{phi}.png`."""
    return "_".join(f"{n}{{{n}}}" for n in names) + ".png"


def write_outputs(decoder: Decoder, params: np.ndarray, out: str | os.PathLike, *,
                  archive: str | os.PathLike = "", progress: bool = True, rgba: bool = False) -> str:
    """Decode `params` into `out`: a `.png` or `.jpg` file (one row), a `.zarr` renders store, a
    `.cdb` Cinema database (data.csv + PNGs; RGBA with the decoded mask as alpha when `rgba`),
    or else a folder of PNGs named from the parameters. Another image suffix is refused rather
    than made a folder. Returns a one-line account of what was written."""
    from PIL import Image

    out = Path(out)
    params = np.asarray(params, dtype=np.float64)
    suffix = out.suffix.lower()
    described = f"decoded from {Path(archive).name or 'an archive'}"
    if suffix == ".zarr":
        from .ingest import ingest  # heavy (multiprocessing, rich): only for this output

        result = ingest(ArchiveSource.of(decoder, params, described), out, workers=1, progress=progress)
        return f"wrote {result.count} decoded images to the renders store {out}"
    if suffix == ".cdb":
        from ..data.sources.cinema import write_cinema

        decoder.check(params)  # one clear error before any image is written
        write_cinema(ArchiveSource.of(decoder, params, described, alpha=rgba), out, progress=progress)
        return f"wrote a Cinema database of {len(params)} {'RGBA' * rgba or 'RGB'} images to {out} (data.csv)"
    if suffix in IMAGE_WRITERS:
        if len(params) != 1:
            raise ParameterError(f"-o {out}: one image file holds one image, but {len(params)} were asked "
                                 f"for; give a folder, a .cdb Cinema database or a .zarr store")
        if rgba and suffix != ".png":
            raise ParameterError(f"-o {out}: JPEG has no alpha channel; --rgba needs a .png")
        images, masks = decoder.decode_with_masks(params)
        if rgba:
            write_png(out, images[0], masks[0] * 255)
        else:
            IMAGE_WRITERS[suffix](out, images[0])
        return f"wrote {out}"
    if suffix in Image.registered_extensions():
        raise ParameterError(f"-o {out}: decode writes .png or .jpg images, a .cdb Cinema database, "
                             f"a .zarr store or a folder, not {suffix} files")
    names = [png_name(decoder.names, row) for row in params]
    if len(set(names)) != len(names):
        raise ParameterError(f"-o {out}: the parameter list repeats a row ({_first_repeat(names)})")
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"decode → {out}", total=len(params))
        for start, images, masks in decoder.batches(params):
            for k, image in enumerate(images):
                write_png(out / names[start + k], image, masks[k] * 255 if rgba else None)
            bar.advance(task, len(images))
    return f"wrote {len(params)} PNG images to {out}"


def _first_repeat(names: list[str]) -> str:
    seen = set()
    return next(n for n in names if n in seen or seen.add(n))


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (images done of total, time left); disabled when not `enabled`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
