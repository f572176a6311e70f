"""The local driver process: `python -m nervi_hpc.hpc.driver RUN_DIR PROFILE_NAME PROFILE_JSON`
runs the run's stages one after the other through submitit's LocalExecutor."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import Profile
from ..pipeline import STAGES
from ..paths import RunPaths
from ..schema import build
from . import manifest
from .backends.local import Local, local_parameters
from .jobs import job_for
from .manifest import Manifest
from .reconcile import apply_verdicts
from .resources import plan


POLL_S = 1.0


def drive_local(paths: RunPaths, profile_name: str, profile: Profile) -> None:
    """Run the run's unfinished stages one after the other through submitit's LocalExecutor,
    stopping at the first that does not finish (the driver process's main)."""
    from submitit import LocalExecutor

    resources = plan(profile, profile_name)
    local = Local()
    for stage in STAGES:
        with manifest.locked(paths.manifest_lock):  # the submitter may still be writing it
            current = manifest.read(paths)
        if current.state in ("failed", "cancelled"):
            return
        if current.stages[stage].state == "done":
            continue
        executor = LocalExecutor(folder=paths.jobs, max_num_timeout=profile.max_requeues)
        executor.update_parameters(**local_parameters(profile, resources[stage]))

        def start(m: Manifest) -> object:
            if m.stages[stage].state == "cancelled":
                return None
            job = executor.submit(job_for(stage, paths, resources[stage]))
            m.submitted(stage, job.job_id, resources[stage].tasks)
            return job

        job = manifest.update(paths, start)  # under the lock: the job records its start after this
        if job is None:
            return
        print(f"{time.strftime('%H:%M:%S')} {stage}: job {job.job_id}", flush=True)
        while not job.done():
            time.sleep(POLL_S)
        verdicts = local.query([job.job_id])
        manifest.update(paths, lambda m: apply_verdicts(m, verdicts, paths))


def _main(argv: list[str]) -> None:
    """The local driver: `python -m nervi_hpc.hpc.driver RUN_DIR PROFILE_NAME PROFILE_JSON`."""
    run_dir, profile_name, profile_json = argv
    drive_local(RunPaths(Path(run_dir)), profile_name, build(Profile, json.loads(profile_json), "profile"))


if __name__ == "__main__":
    _main(sys.argv[1:])
