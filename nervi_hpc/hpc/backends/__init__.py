"""Scheduler backends, one module each: `base` (the interface and a job's `Verdict`), `slurm`,
`local`; `backend_for` picks the one that knows a run's jobs from here."""

from __future__ import annotations

import socket

from ..manifest import Manifest
from .local import Local
from .slurm import Slurm


def backend_for(m: Manifest) -> Slurm | Local | None:
    """The scheduler that knows the run's jobs from here: Slurm, or Local on the machine that
    runs the local driver (None elsewhere: another machine's processes cannot be seen)."""
    if m.executor == "slurm":
        return Slurm()
    if m.driver is None or m.driver.get("host") == socket.gethostname():
        return Local()
    return None
