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

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ...data.sources import Source
from ...data.store import RenderStore, partial_path
from ...progress import ProgressLog, progress_bar
from ...units import human_bytes
from .mpi import everywhere, mpi_comm, on_root
from .pixels import check_source
from .shards import (Plan, default_shard_size, fingerprint, finish, prepare, write_one_shard,
                     write_store_contact_sheet)
from .workers import default_workers, write_local


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
        stored = (f"{human_bytes(self.stored_bytes)} stored, "
                  f"{self.raw_bytes / max(self.stored_bytes, 1):.1f}× smaller than the raw pixels")
        if self.written == 0:
            return f"{self.path}: already complete, {self.count} images in {self.shards} shards, {stored}"
        seconds = max(self.seconds, 1e-9)
        written_bytes = self.raw_bytes * self.written / self.count
        return (f"{self.path}: {self.count} images in {self.shards} shards ({self.written} written, "
                f"{self.skipped} already done) in {self.seconds:.1f} s, {self.written / seconds:.1f} img/s, "
                f"{written_bytes / 1e6 / seconds:.1f} MB/s of pixels; {stored}")


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
    check_source(source)
    count = len(source)
    shard_size = min(shard_size or default_shard_size(count, *source.size), count)
    digest = fingerprint(source, shard_size)
    comm = mpi_comm()
    background = on_root(comm, lambda: prepare(source, store_path, shard_size, digest))
    if background is None:
        written, skipped = 0, count
    else:
        plan = Plan(source, partial_path(store_path), shard_size, tuple(background))
        done = plan.done()
        skipped = plan.images_in(done)
        written = count - skipped
        _write_unfinished(plan, done, comm, workers, progress, f"ingest {store_path.name}", lines)
        on_root(comm, lambda: finish(plan, store_path, digest))
    if contact_sheet is not None:
        on_root(comm, lambda: write_store_contact_sheet(RenderStore.open(store_path), contact_sheet))
    height, width = source.size
    return IngestResult(path=store_path, count=count, shards=-(-count // shard_size), written=written,
                        skipped=skipped, seconds=time.perf_counter() - started,
                        raw_bytes=count * height * width * 3, stored_bytes=_disk_usage(store_path),
                        rank=0 if comm is None else comm.Get_rank())


def _write_unfinished(plan: Plan, done: set[int], comm, workers: int | None, progress: bool,
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
            write_local(plan, mine, workers or default_workers(), report)
        else:
            everywhere(comm, lambda: [write_one_shard(plan, shard, report) for shard in mine])


def _disk_usage(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
