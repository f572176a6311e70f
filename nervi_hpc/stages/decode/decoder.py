"""Decode images from a `.nervi` archive: the model it holds, batched inference.

`Decoder.open(path)` reads the archive once (its header's `meta` validated by
nervi_hpc.codec.header), rebuilds the network in eval mode (BatchNorm uses its running
statistics) and decodes parameter rows into uint8 images composited as the archive's model says:
`hard` (the paper's rule: the predicted colour where the mask m̂ > 0.5, elsewhere the background)
or `soft` (blended over the background by the mask's ramp, the default preset's choice). On CUDA
it runs under bf16 autocast in channels_last; on the CPU in float32.

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
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch

from ...codec.archive import ArchiveInfo, read_archive
from ...codec.header import ArchiveMeta
from ...data.dataset import normalize
from ...errors import ArchiveError, ConfigError, ModelError, ParameterError
from ...model.compositing import composite, to_uint8
from ...model.config import ModelConfig
from ...model.network import NeRVI
from ...parameters import label
BATCH_PIXELS = 1 << 22      # default batch on a GPU: about 4 M output pixels (4 images of 1024², 64 of 256²)
# On a CPU a batch is fastest while its activations stay in cache: at 256² batch 4 decodes 4–5×
# faster than 64 (docs/benchmarks.md, issue 13), so the CPU's batch holds about 256 k pixels.
CPU_BATCH_PIXELS = 1 << 18
MAX_BATCH = 256
GRID_TOLERANCE = 1e-9       # relative: a value this close to a grid value is on the grid
WEIGHT_BYTES = 2 + 4 + 4    # per weight while opening: its symbol, the state dict, the model
ACTIVATION_COPIES = 3       # float32 copies of an upscale block's output alive at once (conv, shuffle, norm)
MAX_ELEMENTS = 1 << 31      # torch kernels index a tensor with 32 bits: one batch's activation stays below


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


def default_batch_size(height: int, width: int, device: torch.device) -> int:
    """About BATCH_PIXELS output pixels per batch on a GPU (CPU_BATCH_PIXELS on a CPU), 1..MAX_BATCH
    images."""
    pixels = BATCH_PIXELS if device.type == "cuda" else CPU_BATCH_PIXELS
    return max(1, min(MAX_BATCH, pixels // (height * width)))


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
        self.batch_size = batch_size or min(default_batch_size(meta.height, meta.width, self.device), largest)
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
        return label(self.names, row)

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
