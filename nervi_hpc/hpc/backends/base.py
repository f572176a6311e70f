"""What every scheduler backend answers: a `Verdict` per job id (its view of the job, which wins
over a manifest that still says running when a job died without recording its end), and
cancelling jobs."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Verdict:
    """The scheduler's view of one job: `state` in the manifest's terms (queued, running, done,
    failed, cancelled) or "gone" (the scheduler no longer knows it), and its own words."""

    state: str
    detail: str


class Backend(abc.ABC):
    """A scheduler that knows job ids: what it says of them, and how to stop them."""

    @abc.abstractmethod
    def query(self, job_ids: Iterable[str]) -> dict[str, Verdict]:
        """The verdict on each of `job_ids`."""

    @abc.abstractmethod
    def cancel(self, job_ids: Iterable[str]) -> None:
        """Stop the jobs `job_ids`."""


def process_alive(pid: int, marker: str) -> bool:
    """Whether process `pid` runs (not a zombie) with `marker` in its command line (a pid the
    system gave to some other process since does not count)."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and marker in command
