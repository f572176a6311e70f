"""The local backend: jobs are processes of this machine (a job id is its submitit controller's
pid), run one after the other by a detached driver process (nervi_hpc.hpc.driver), so `submit`
returns at once here too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Iterable

from ...config import Profile
from ...paths import RunPaths
from ...schema import to_dict
from ..resources import Resources
from .base import Backend, Verdict, process_alive

DRIVER_MODULE = "nervi_hpc.hpc.driver"  # `python -m` it; also how a live driver is told from a reused pid


class Local(Backend):
    """Local jobs are processes of this machine: a job id is its submitit controller's pid."""

    def query(self, job_ids: Iterable[str]) -> dict[str, Verdict]:
        return {str(j): (Verdict("running", "process running") if process_alive(int(j), "submitit")
                         else Verdict("gone", "process ended")) for j in job_ids}

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:  # SIGINT: the controller stops its tasks (SIGINT, then SIGKILL)
            if process_alive(int(job_id), "submitit"):
                os.kill(int(job_id), signal.SIGINT)


def local_parameters(profile: Profile, res: Resources) -> dict:
    """LocalExecutor parameters of one stage's job (GPUs 0..n-1 visible, none when n = 0)."""
    params = dict(tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node, timeout_min=res.time_min,
                  signal_delay_s=profile.signal_delay_s, stderr_to_stdout=True)
    if res.setup:
        params["setup"] = list(res.setup)
    return params


def start_driver(paths: RunPaths, profile_name: str, profile: Profile) -> dict:
    """Start the detached local driver; return its {pid, host} for the manifest."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", DRIVER_MODULE, str(paths.root), profile_name,
               json.dumps(to_dict(profile))]
    with open(paths.driver_log, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # survives the terminal's Ctrl-C
    return {"pid": process.pid, "host": socket.gethostname()}
