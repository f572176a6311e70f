"""The job manager against a real Slurm (CI starts one with .ci/slurm-up.sh): a whole run to a
decodable archive with MPI ingest and 2-task DDP training, the afterok chain after a failed
ingest, requeue (preemption signal and `scontrol requeue`) resuming from the checkpoint, cancel,
and a job that died without telling the manifest. Skipped when no Slurm answers, unless
NERVI_TEST_SLURM=required (CI), where that is a failure."""

import contextlib
import io
import json
import os
import signal
import subprocess

import numpy as np
import pytest
import yaml

from nervi_hpc.cli import main
from nervi_hpc.config import ClusterConfig, Profile
from nervi_hpc.hpc import lifecycle, manifest
from nervi_hpc.hpc.backends.base import process_alive
from nervi_hpc.hpc.status import snapshot
from nervi_hpc.paths import StoragePaths
from nervi_hpc.stages.decode.decoder import Decoder
from tests.hpc.test_jobs import TINY, wait_until, write_spec

pytestmark = pytest.mark.slurm


def _partition() -> str | None:
    """The default partition of a reachable Slurm, or None."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.split()
    if out.returncode != 0 or not names:
        return None
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


@pytest.fixture(scope="module")
def partition():
    found = _partition()
    if found is None:
        reason = "no Slurm cluster reachable (`sinfo` missing or failing); CI starts one with .ci/slurm-up.sh"
        if os.environ.get("NERVI_TEST_SLURM") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def profile(partition: str, **changes) -> Profile:
    base = dict(executor="slurm", partition=partition, gpus_per_node=0, cpus_per_task=1, mem_gb=0.5,
                time_min=10, signal_delay_s=15)
    return Profile(**{**base, **changes})


def cluster(tmp_path, partition: str, **changes) -> ClusterConfig:
    return ClusterConfig(storage_root=str(tmp_path / "storage"), default_profile="slurm",
                         profiles={"slurm": profile(partition, **changes)})


def sacct(job_id: str, fields: str = "State", duplicates: bool = False) -> list[list[str]]:
    command = ["sacct", "-X", "-n", "-P", "-o", fields, "-j", str(job_id)] + (["-D"] if duplicates else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def finished(paths, timeout: float):
    return wait_until(lambda: (v := snapshot([paths])[0]).manifest.terminal and v.manifest, timeout,
                      f"{paths.root.name} to end")


def test_whole_run_with_mpi_ingest_and_two_task_ddp_training(tmp_path, partition):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "storage_root": str(tmp_path / "storage"), "default_profile": "slurm",
        "profiles": {"slurm": {"executor": "slurm", "partition": partition, "gpus_per_node": 0,
                               "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 0.5, "time_min": 10,
                               "mpi": "pmi2", "stages": {"ingest": {"tasks_per_node": 2}}}}}))
    spec = write_spec(tmp_path, "whole", epochs=4)
    os.environ["NERVI_CLUSTER"] = str(config)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert main(["submit", str(spec), "--wait"]) == 0, out.getvalue()
    finally:
        del os.environ["NERVI_CLUSTER"]
    storage = StoragePaths(tmp_path / "storage")
    paths = storage.run(manifest.run_ids(storage)[0])
    m = manifest.read(paths)
    assert m.state == "done" and m.executor == "slurm"
    ingest, train, compress = (m.stages[s] for s in ("ingest", "train", "compress"))
    assert (ingest.tasks, train.tasks, compress.tasks) == (2, 2, 1)
    assert train.figures.world_size == 2
    assert "ingest: job" in paths.job_log(ingest.job_id, 1).read_text()  # the second MPI rank ran
    assert "train: job" in paths.job_log(train.job_id, 1).read_text()  # the second DDP task ran
    for record in (ingest, train, compress):  # accounting lags a little behind the controller
        wait_until(lambda: sacct(record.job_id) == [["COMPLETED"]], 30, f"job {record.job_id} COMPLETED")
    archive = paths.root / compress.figures.archive
    assert str(archive) in out.getvalue() and "nervi-hpc decode" in out.getvalue()
    assert Decoder.open(archive, device="cpu").decode(np.array([[0.0, 30.0, 0.0]])).shape == (1, 16, 16, 3)


def test_failed_ingest_never_starts_training(tmp_path, partition):
    """Submit checks the source's listing and first image; a later image of another size passes
    that check and fails only in the ingest job, which must cancel the stages after it."""
    from PIL import Image

    folder = tmp_path / "renders"
    folder.mkdir()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(folder / "t0.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "t1.png")
    spec = tmp_path / "broken.yaml"
    spec.write_text(yaml.safe_dump({"name": "broken", "train": {"epochs": 1}, "model": TINY["model"],
                                    "source": {"kind": "folder", "path": str(folder),
                                               "pattern": "t{t}.png"}}))
    paths = lifecycle.submit(spec, cluster(tmp_path, partition)).paths
    m = finished(paths, 120)
    assert m.state == "failed" and m.reason.startswith("ingest: ") and "t1.png: image is 8×8" in m.reason, m.reason
    for stage in ("train", "compress"):
        record = m.stages[stage]
        assert record.state == "cancelled" and record.reason == "not started: ingest failed"
        assert record.starts == 0 and not paths.job_log(record.job_id).exists()
        # Slurm kills the chain in one pass or two: the second pass finds compress's dependency
        # already failed, so its reason may read "DependencyNeverSatisfied".
        (row,) = wait_until(lambda: [r for r in sacct(record.job_id, "State,Elapsed,Start,Reason") if r[0] == "CANCELLED"],
                            30, f"accounting to show job {record.job_id} cancelled")
        _, elapsed, start, reason = row
        assert (elapsed, start) == ("00:00:00", "None") and reason.startswith("Dependency"), row


def test_requeued_training_resumes_from_its_checkpoint(tmp_path, partition):
    """First the preemption signal (USR2, as at a time limit: submitit checkpoints and
    requeues), then `scontrol requeue` (SIGTERM: no checkpoint call); each time training
    restarts from its newest checkpoint and the run still finishes."""
    spec = write_spec(tmp_path, "requeue", epochs=100000, max_minutes=0.3, checkpoint_minutes=0.02)
    paths = lifecycle.submit(spec, cluster(tmp_path, partition)).paths

    def newest_step() -> int:
        return max((int(p.parent.name.split("-")[1]) for p in paths.checkpoints.glob("step-*/DONE")), default=0)

    def running_with_checkpoint(starts: int, after: int):
        m = manifest.read(paths)
        return m.stages["train"].state == "running" and m.stages["train"].starts == starts and newest_step() > after

    wait_until(lambda: running_with_checkpoint(1, 0), 120, "training with a checkpoint")
    train_job = manifest.read(paths).stages["train"].job_id
    subprocess.run(["scancel", "--signal=USR2", train_job], check=True)
    first = newest_step()
    wait_until(lambda: running_with_checkpoint(2, first), 120, "the requeued job's next checkpoint")
    subprocess.run(["scontrol", "requeue", train_job], check=True)
    m = finished(paths, 240)
    assert m.state == "done", m.reason
    assert m.stages["train"].starts == 3 and m.stages["train"].job_id == train_job
    log = paths.job_log(train_job).read_text()
    assert "Requeued job" in log and log.count("[nervi-hpc] train: job") == 3
    states = [row[0] for row in sacct(train_job, duplicates=True)]
    assert states.count("REQUEUED") == 2 and states[-1] == "COMPLETED"
    records = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if "epochs" in r]
    restarts = [later for earlier, later in zip(steps, steps[1:]) if later <= earlier]
    assert len(restarts) >= 1 and all(step > 3 for step in restarts)  # resumed, never from scratch


def test_cancel_stops_every_job(tmp_path, partition, capsys):
    spec = write_spec(tmp_path, "cancel", epochs=100000, max_minutes=5)
    config = cluster(tmp_path, partition)
    paths = lifecycle.submit(spec, config).paths
    wait_until(lambda: manifest.read(paths).stages["train"].state == "running", 120, "training")
    m = lifecycle.cancel(paths)
    assert m.state == "cancelled"
    assert all(s.state in ("done", "cancelled") for s in m.stages.values())
    jobs = [m.stages[s].job_id for s in ("train", "compress")]
    wait_until(lambda: subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True,
                                      text=True).stdout.strip() == "", 60, "the jobs to leave the queue")
    assert snapshot([paths])[0].manifest.state == "cancelled"
    assert wait_until(lambda: [r[0].split()[0] for r in sacct(jobs[0])] == ["CANCELLED"] or None, 30,
                      "accounting")


def test_status_shows_slurms_verdict_for_a_killed_job(tmp_path, partition):
    """A training task killed outright (SIGKILL: no Python handler runs) leaves the manifest at
    `running`; status asks Slurm and reports the job failed."""
    spec = write_spec(tmp_path, "killed", epochs=100000, max_minutes=5)
    paths = lifecycle.submit(spec, cluster(tmp_path, partition)).paths
    wait_until(lambda: manifest.read(paths).stages["train"].state == "running", 120, "training")
    job = manifest.read(paths).stages["train"].job_id
    listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout
    tasks = [int(line.split()[0]) for line in listed.splitlines()[1:]
             if process_alive(int(line.split()[0]), "submitit.core._submit")]
    assert tasks, listed
    for pid in tasks:  # the job's own task (scancel --signal=KILL would count as a cancel)
        os.kill(pid, signal.SIGKILL)
    m = finished(paths, 60)
    assert m.state == "failed"
    assert m.stages["train"].reason.startswith(f"job {job} died: FAILED")
    assert m.stages["compress"].state == "cancelled"
