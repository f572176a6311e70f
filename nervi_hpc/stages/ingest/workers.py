"""Shards written by a spawn-context pool of worker processes that die with their parent."""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from ...errors import StoreError
from .shards import Plan, write_one_shard


MAX_WORKERS = 8


WATCHDOG_SECONDS = 0.5  # how often a pool worker checks that its parent still lives


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, MAX_WORKERS)


def write_local(plan: Plan, shards: list[int], workers: int, report: Callable[[int], object]) -> None:
    """Write `shards` in this process (one worker) or in a pool of spawned processes."""
    workers = min(workers, len(shards))
    if workers <= 1:
        for shard in shards:
            write_one_shard(plan, shard, report)
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


_worker_plan: Plan | None = None
_worker_progress = None


def _init_worker(plan: Plan, progress, parent: int) -> None:
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
    write_one_shard(_worker_plan, shard, _worker_progress.put)
