"""Ingest: a Source → a sharded renders.zarr (nervi_hpc.data.store), parallel over shards, resumable.

The store is written into a sibling `<store>.partial/`. Its `.ingest/state.json` records the
fingerprint of what is being ingested (source names, params, size, background, description,
shard size…) and the background colour in use; each shard, once its pixels are written, gets a
marker `.ingest/shard-NNNNN.done`. When every shard is done the attrs are written and the partial
is renamed onto the final path. A re-run skips the finished shards of a partial with the same
fingerprint, discards one with another, does nothing for a complete store with the same
fingerprint and refuses to overwrite a complete store with another.

Each shard is written by exactly one worker: a process of a spawn-context pool, or under an MPI
launcher (mpiexec, srun) the ranks, rank r taking shards r, r + K, …
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import atomic, errors
from ..data.imaging import write_contact_sheet
from ..data.sources import Source
from ..errors import ConfigError, NerviError, SourceError, StoreError
from ..progress import ProgressLog, progress_bar
from ..data.store import (FORMAT, INGEST_DIR, VERSION, RenderStore, create_arrays, finish_attrs, partial_path, read_attrs, write_shard)

SHARD_BYTES = 64 * 2**20  # default shard: images per this many bytes of raw pixels
BATCH_BYTES = 16 * 2**20  # images asked of the source per read (memory, progress steps)
MAX_WORKERS = 8
BACKGROUND_SAMPLES = 16
SHEET_IMAGES = 64
WHITE = (255, 255, 255)
WATCHDOG_SECONDS = 0.5  # how often a pool worker checks that its parent still lives
# Set by MPI launchers (Open MPI, MPICH/Hydra, Intel MPI, PMIx/Slurm); only then is mpi4py imported.
MPI_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS")
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")


@dataclass
class IngestResult:
    """What one ingest call did. `written`/`skipped` count images (in shards written by this call /
    finished by an earlier one); `raw_bytes` is N·H·W·3 of the whole store, `stored_bytes` its size
    on disk."""

    path: Path
    count: int
    shards: int
    written: int
    skipped: int
    seconds: float
    raw_bytes: int
    stored_bytes: int
    rank: int = 0  # this process's MPI rank: only rank 0 reports

    def summary(self) -> str:
        stored = (f"{_human(self.stored_bytes)} stored, "
                  f"{self.raw_bytes / max(self.stored_bytes, 1):.1f}× smaller than the raw pixels")
        if self.written == 0:
            return f"{self.path}: already complete, {self.count} images in {self.shards} shards, {stored}"
        seconds = max(self.seconds, 1e-9)
        written_bytes = self.raw_bytes * self.written / self.count
        return (f"{self.path}: {self.count} images in {self.shards} shards ({self.written} written, "
                f"{self.skipped} already done) in {self.seconds:.1f} s, {self.written / seconds:.1f} img/s, "
                f"{written_bytes / 1e6 / seconds:.1f} MB/s of pixels; {stored}")


# ----------------------------------------------------------------------------------------------
# Pixels


def composite(rgb: np.ndarray, alpha: np.ndarray | None, background: Sequence[int]) -> np.ndarray:
    """Straight RGB (…, 3) with alpha (…) over `background`, rounded in integer math; RGB as is
    when there is no alpha."""
    if alpha is None:
        return rgb
    a = alpha[..., None].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    return ((rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def foreground_mask(rgb: np.ndarray, alpha: np.ndarray | None, background: Sequence[int],
                    tolerance: int) -> np.ndarray:
    """uint8 0/1: alpha > 0 where there is alpha, else a channel differs from the background by
    more than `tolerance`."""
    if alpha is not None:
        return (alpha > 0).view(np.uint8)
    far = np.zeros(rgb.shape[:-1], bool)
    for channel, value in enumerate(background):  # two uint8 comparisons per channel: no wide copies
        plane = rgb[..., channel]
        if value + tolerance < 255:
            far |= plane > value + tolerance
        if value - tolerance > 0:
            far |= plane < value - tolerance
    return far.view(np.uint8)


def spread(count: int, k: int) -> np.ndarray:
    """Up to `k` distinct indices spread evenly over 0..count-1, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(k, count)).round().astype(np.int64))


def detect_background(source: Source) -> tuple[int, int, int]:
    """The most common colour of the border pixels of up to 16 images spread over the source
    (white for images with alpha). SourceError when no colour covers most of the border."""
    borders = []
    for index in spread(len(source), BACKGROUND_SAMPLES).tolist():  # one at a time: 8192² fits too
        (rgb,), alpha = _read(source, [index])
        if alpha is not None:
            return WHITE
        borders += [rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]]
    codes = np.concatenate(borders).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    values, counts = np.unique(codes, return_counts=True)
    top = int(values[counts.argmax()])
    colour = (top >> 16, (top >> 8) & 255, top & 255)
    share = counts.max() / codes.size
    if share <= 0.5:
        raise SourceError(f"{source.description}: cannot detect the background colour: the most "
                          f"common border colour {list(colour)} covers only {share:.0%} of the image "
                          f"borders; give the background as [r, g, b]")
    return colour


def _read(source: Source, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """source.read, checked against the Source contract."""
    rgb, alpha = source.read(indices)
    shape = (len(indices), *source.size)
    if (rgb.dtype != np.uint8 or rgb.shape != (*shape, 3)
            or alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != shape)):
        got = f"{rgb.shape} {rgb.dtype}" + ("" if alpha is None else f" + alpha {alpha.shape} {alpha.dtype}")
        raise SourceError(f"{source.label(indices[0])}: the source returned pixels {got}, "
                          f"expected {(*shape, 3)} uint8")
    return rgb, alpha


def _check_source(source: Source) -> None:
    where = source.description
    params = np.asarray(source.params)
    if len(params) == 0:
        raise SourceError(f"{where}: no images")
    if params.ndim != 2 or params.shape[1] != len(source.names):
        raise SourceError(f"{where}: params have shape {params.shape}, expected "
                          f"({len(params)}, {len(source.names)}) for {', '.join(source.names)}")
    bad = np.flatnonzero(~np.isfinite(params).all(axis=1))
    if bad.size:
        raise SourceError(f"{where}: image {bad[0]} has non-finite parameter values {params[bad[0]].tolist()}")


# ----------------------------------------------------------------------------------------------
# The plan every worker follows


@dataclass(frozen=True)
class _Plan:
    source: Source
    partial: Path
    shard_size: int
    background: tuple[int, int, int]

    @property
    def shards(self) -> int:
        return -(-len(self.source) // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, len(self.source))

    def marker(self, shard: int) -> Path:
        return self.partial / INGEST_DIR / f"shard-{shard:05d}.done"

    def done(self) -> set[int]:
        """The shards with a marker (one folder listing, not a stat per shard)."""
        names = set(os.listdir(self.partial / INGEST_DIR))
        return {s for s in range(self.shards) if self.marker(s).name in names}

    def images_in(self, shards) -> int:
        return sum(stop - start for start, stop in map(self.bounds, shards))


def _state_file(partial: Path) -> Path:
    return partial / INGEST_DIR / "state.json"


def default_shard_size(count: int, height: int, width: int) -> int:
    """Images per ≈ 64 MB of raw pixels, at least 1, at most `count`."""
    return max(1, min(count, SHARD_BYTES // (height * width * 3)))


def fingerprint(source: Source, shard_size: int) -> str:
    """A digest of everything that determines the store's content and layout."""
    params = np.ascontiguousarray(source.params, dtype="<f8")
    facts = {"version": VERSION, "names": list(source.names), "params_shape": list(params.shape),
             "params_sha256": hashlib.sha256(params.tobytes()).hexdigest(),
             "size": list(source.size), "mode": source.mode, "description": source.description,
             "background": None if source.background is None else list(source.background),
             "mask_tolerance": source.mask_tolerance, "shard_size": shard_size}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _prepare(source: Source, store_path: Path, shard_size: int, digest: str) -> tuple[int, int, int] | None:
    """Create or resume the partial store and return its background colour; None if the store is
    already complete."""
    if store_path.exists():
        attrs = read_attrs(store_path)
        if attrs is None or attrs.get("nervi_format") != FORMAT:
            raise StoreError(f"{store_path}: exists and is not a nervi renders store; refusing to overwrite it")
        if attrs.get("fingerprint") != digest:
            raise StoreError(f"{store_path}: a complete store of another source or shard size is there; "
                             f"refusing to overwrite it (remove it or choose another output)")
        shutil.rmtree(store_path / INGEST_DIR, ignore_errors=True)  # left by a crash after the rename
        return None
    partial = partial_path(store_path)
    try:
        state = json.loads(_state_file(partial).read_text())
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("fingerprint") == digest:
        return tuple(state["background"])
    if partial.exists():
        _say(f"discarding {partial}: an unfinished ingest of another source or shard size (or one "
             f"that never got past its set-up)")
        shutil.rmtree(partial)
    background = tuple(source.background) if source.background is not None else detect_background(source)
    create_arrays(partial, np.asarray(source.params, np.float64), *source.size, shard_size)
    (partial / INGEST_DIR).mkdir()
    atomic.write_json(_state_file(partial), {"fingerprint": digest, "background": list(background)})
    return background


def _write_shard(plan: _Plan, shard: int, report: Callable[[int], object]) -> None:
    """Read, composite and mask the images of one shard, write it whole, then mark it done."""
    start, stop = plan.bounds(shard)
    height, width = plan.source.size
    images = np.empty((stop - start, height, width, 3), np.uint8)
    masks = np.empty((stop - start, height, width), np.uint8)
    step = max(1, BATCH_BYTES // (height * width * 3))
    for lo in range(start, stop, step):
        hi = min(lo + step, stop)
        rgb, alpha = _read(plan.source, list(range(lo, hi)))
        images[lo - start:hi - start] = composite(rgb, alpha, plan.background)
        masks[lo - start:hi - start] = foreground_mask(rgb, alpha, plan.background, plan.source.mask_tolerance)
        report(hi - lo)
    write_shard(plan.partial, start, images, masks)
    atomic.write_text(plan.marker(shard), "")


def _finish(plan: _Plan, store_path: Path, digest: str) -> None:
    """Write the attrs that make the store complete and move it to its final path."""
    source = plan.source
    params = np.asarray(source.params, np.float64)
    finish_attrs(plan.partial, {
        "param_names": list(source.names),
        "grids": {n: np.unique(params[:, j]).tolist() for j, n in enumerate(source.names)},
        "ranges": {n: [float(params[:, j].min()), float(params[:, j].max())] for j, n in enumerate(source.names)},
        "background": list(plan.background), "mode": source.mode, "source": source.description,
        "shard_size": plan.shard_size, "count": len(source), "height": source.size[0],
        "width": source.size[1], "fingerprint": digest,
    })
    try:
        os.rename(plan.partial, store_path)
    except OSError as e:
        raise StoreError(f"{store_path}: cannot move the finished ingest there ({e.strerror})") from None
    shutil.rmtree(store_path / INGEST_DIR, ignore_errors=True)  # bookkeeping only: a re-run also clears it


def write_store_contact_sheet(store: RenderStore, path: str | os.PathLike) -> None:
    """A PNG of up to 64 images spread over the store, labelled with their parameters."""
    picks = spread(len(store), SHEET_IMAGES)
    images, _ = store.read(picks)
    labels = [" ".join(f"{name}={value:.4g}" for name, value in zip(store.param_names, store.params[i]))
              for i in picks]
    write_contact_sheet(path, list(images), labels)


# ----------------------------------------------------------------------------------------------
# The entry point


def ingest(source: Source, store_path: str | os.PathLike, *, shard_size: int | None = None,
           workers: int | None = None, progress: bool = True,
           contact_sheet: str | os.PathLike | None = None, lines: ProgressLog | None = None) -> IngestResult:
    """Write `source` into the renders store at `store_path` (see the module docstring).

    shard_size: images per shard (default ≈ 64 MB of raw pixels); workers: processes (default
    min(CPUs, 8, shards); ignored under an MPI launcher, whose ranks are the workers); `lines`
    reports rank 0's images written at intervals (a job's log).
    """
    started = time.perf_counter()
    store_path = Path(store_path)
    _check_source(source)
    count = len(source)
    shard_size = min(shard_size or default_shard_size(count, *source.size), count)
    digest = fingerprint(source, shard_size)
    comm = _mpi_comm()
    background = _on_root(comm, lambda: _prepare(source, store_path, shard_size, digest))
    if background is None:
        written, skipped = 0, count
    else:
        plan = _Plan(source, partial_path(store_path), shard_size, tuple(background))
        done = plan.done()
        skipped = plan.images_in(done)
        written = count - skipped
        _write_unfinished(plan, done, comm, workers, progress, f"ingest {store_path.name}", lines)
        _on_root(comm, lambda: _finish(plan, store_path, digest))
    if contact_sheet is not None:
        _on_root(comm, lambda: write_store_contact_sheet(RenderStore.open(store_path), contact_sheet))
    height, width = source.size
    return IngestResult(path=store_path, count=count, shards=-(-count // shard_size), written=written,
                        skipped=skipped, seconds=time.perf_counter() - started,
                        raw_bytes=count * height * width * 3, stored_bytes=_disk_usage(store_path),
                        rank=0 if comm is None else comm.Get_rank())


def _write_unfinished(plan: _Plan, done: set[int], comm, workers: int | None, progress: bool,
                      label: str, lines: ProgressLog | None = None) -> None:
    """Write the shards not `done`: all of them here, or under MPI this rank's share (shards
    rank, rank + K, …), with a progress bar (and `lines`) on rank 0."""
    rank, ranks = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    mine = [s for s in range(rank, plan.shards, ranks) if s not in done]
    with progress_bar(progress and rank == 0, rate=True) as bar:
        task = bar.add_task(label + (f" (rank 0 of {ranks})" if ranks > 1 else ""), total=plan.images_in(mine))

        written = 0

        def report(images: int) -> None:
            nonlocal written
            written += images
            bar.advance(task, images)
            if lines is not None and rank == 0:
                lines(images=written, total=plan.images_in(mine))

        if comm is None:
            _write_local(plan, mine, workers or _default_workers(), report)
        else:
            _everywhere(comm, lambda: [_write_shard(plan, shard, report) for shard in mine])


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, MAX_WORKERS)


def _write_local(plan: _Plan, shards: list[int], workers: int, report: Callable[[int], object]) -> None:
    """Write `shards` in this process (one worker) or in a pool of spawned processes."""
    workers = min(workers, len(shards))
    if workers <= 1:
        for shard in shards:
            _write_shard(plan, shard, report)
        return
    context = multiprocessing.get_context("spawn")  # never fork: torch may live in this process
    reports = context.Queue()

    def drain():
        while True:
            try:
                report(reports.get_nowait())
            except queue.Empty:
                return

    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(plan, reports, os.getpid()))
    try:
        pending = {pool.submit(_pool_write_shard, shard) for shard in shards}
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for future in finished:
                future.result()
    except BrokenProcessPool as e:
        raise StoreError(f"{plan.partial}: an ingest worker process died ({e}); "
                         f"finished shards are kept, re-run to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        drain()
        reports.close()


_worker_plan: _Plan | None = None
_worker_progress = None


def _init_worker(plan: _Plan, progress, parent: int) -> None:
    global _worker_plan, _worker_progress
    _worker_plan, _worker_progress = plan, progress
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watchdog", daemon=True).start()
    if "torch" in sys.modules:  # a synthetic source renders with torch: processes parallelise,
        sys.modules["torch"].set_num_threads(1)  # threads would only fight over the cores


def _exit_with(parent: int) -> None:
    """End this worker once its parent is gone (killed with -9, say): the pool's own shutdown
    never runs then, and shards written for nobody would hold the CPUs and disks for minutes."""
    while os.getppid() == parent:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


def _pool_write_shard(shard: int) -> None:
    _write_shard(_worker_plan, shard, _worker_progress.put)


# ----------------------------------------------------------------------------------------------
# MPI: collective helpers that turn an error on any rank into the same error on every rank


def _mpi_comm():
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else None."""
    if not any(var in os.environ for var in MPI_LAUNCHER_VARS):
        return None
    sizes = [int(os.environ[var]) for var in MPI_SIZE_VARS if os.environ.get(var, "").isdigit()]
    if sizes and max(sizes) <= 1:
        return None
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:
        raise ConfigError(f"launched by an MPI launcher but mpi4py cannot load an MPI library ({e}); "
                          f"load the site's MPI module or `pip install mpich`") from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _on_root(comm, task: Callable):
    """Run `task` on rank 0 only; every rank gets its result or raises its error."""
    if comm is None:
        return task()
    outcome = _attempt(task) if comm.Get_rank() == 0 else None
    shared = comm.bcast(_shareable(outcome), root=0)
    if outcome is not None and outcome[0] == "error":
        raise outcome[1]
    return _unpack(shared, 0)


def _everywhere(comm, task: Callable) -> None:
    """Run `task` on every rank; if it fails anywhere, every rank raises that error."""
    outcome = _attempt(task)
    outcomes = comm.allgather(_shareable(outcome))
    if outcome[0] == "error":
        raise outcome[1]
    for rank, shared in enumerate(outcomes):
        _unpack(shared, rank)


def _attempt(task: Callable):
    try:
        return "ok", task()
    except Exception as e:  # re-raised on this rank, reported to the others
        return "error", e


def _shareable(outcome):
    """An outcome as plain data for the other ranks (errors as class name + message)."""
    if outcome is None or outcome[0] == "ok":
        return outcome
    error = outcome[1]
    return "error", (type(error).__name__, str(error))


def _unpack(shared, rank: int):
    kind, value = shared
    if kind == "ok":
        return value
    name, message = value
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, NerviError):
        raise cls(message)
    raise NerviError(f"rank {rank} failed: {name}: {message}")


# ----------------------------------------------------------------------------------------------
# Output


def _say(message: str) -> None:
    print(f"nervi-hpc ingest: {message}", file=sys.stderr)


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size /= 1000
    return f"{size:.3g} {unit}" if unit != "B" else f"{size:.0f} B"


def _disk_usage(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
