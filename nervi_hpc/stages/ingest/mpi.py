"""Ingest under an MPI launcher (mpiexec, srun): the communicator, and collective helpers that turn
an error on any rank into the same error on every rank."""

from __future__ import annotations

import os
from typing import Callable

from ... import errors
from ...errors import ConfigError, NerviError


# Set by MPI launchers (Open MPI, MPICH/Hydra, Intel MPI, PMIx/Slurm); only then is mpi4py imported.
MPI_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS")
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")


def mpi_comm():
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


def on_root(comm, task: Callable):
    """Run `task` on rank 0 only; every rank gets its result or raises its error."""
    if comm is None:
        return task()
    outcome = _attempt(task) if comm.Get_rank() == 0 else None
    shared = comm.bcast(_shareable(outcome), root=0)
    if outcome is not None and outcome[0] == "error":
        raise outcome[1]
    return _unpack(shared, 0)


def everywhere(comm, task: Callable) -> None:
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
