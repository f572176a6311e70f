"""The job manager on the local executor (submitit's LocalExecutor): submit → ingest, train,
compress as real jobs; one run per spec, concurrent submits, cancel, crash and resubmit (resume),
fetch; and what a Slurm profile would send (dry run), which needs no Slurm."""

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import submitit
import yaml

from nervi_hpc.cli import main
from nervi_hpc.config import ClusterConfig, Profile, StageResources, load_cluster
from nervi_hpc.errors import ArchiveError, ConfigError, RunError
from nervi_hpc.hpc import jobs, lifecycle, manifest, resources
from nervi_hpc.hpc.backends import local
from nervi_hpc.hpc.results import fetch
from nervi_hpc.hpc.status import snapshot
from nervi_hpc.paths import RunPaths, StoragePaths
from nervi_hpc.stages.decode.decoder import Decoder

TINY = {"name": "tiny",
        "source": {"kind": "synthetic", "scene": "blobs", "mode": "ir", "size": 16, "t": 0,
                   "theta": [30, 60, 90], "phi": [0, 90, 180, 270], "volume": 16},
        "ingest": {"shard_size": 4, "workers": 1},
        "model": {"c1": 8, "c2": 16, "min_channels": 4},
        "train": {"epochs": 3, "batch_size": 4, "loader_workers": 0}}
LOCAL = Profile(executor="local", cpus_per_task=1, gpus_per_node=0, time_min=10)


def write_spec(folder: Path, name: str = "tiny", **train) -> Path:
    spec = {**TINY, "name": name, "train": {**TINY["train"], **train}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def local_cluster(folder: Path) -> ClusterConfig:
    return ClusterConfig(storage_root=str(folder / "storage"), profiles={"local": LOCAL})


def wait_until(predicate, timeout: float, what: str):
    end, value = time.monotonic() + timeout, None
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")


@contextlib.contextmanager
def cluster_file(folder: Path):
    """NERVI_CLUSTER pointing at a cluster.yaml with the local test profile, for the CLI."""
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump({"storage_root": str(folder / "storage"), "default_profile": "local",
                                    "profiles": {"local": {"executor": "local", "cpus_per_task": 1,
                                                           "gpus_per_node": 0, "time_min": 10}}}))
    before = os.environ.get("NERVI_CLUSTER")
    os.environ["NERVI_CLUSTER"] = str(path)
    try:
        yield path
    finally:
        os.environ.pop("NERVI_CLUSTER") if before is None else os.environ.__setitem__("NERVI_CLUSTER", before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """`nervi-hpc submit tiny.yaml --wait` on the local profile: (run paths, printed output)."""
    folder = tmp_path_factory.mktemp("local")
    spec = write_spec(folder)
    out = io.StringIO()
    with cluster_file(folder), contextlib.redirect_stdout(out):
        status = main(["submit", str(spec), "--wait"])
    assert status == 0, out.getvalue()
    storage = StoragePaths(folder / "storage")
    return storage.run(manifest.run_ids(storage)[0]), out.getvalue(), folder


def test_submit_wait_runs_every_stage_as_a_local_job(finished):
    paths, out, _ = finished
    m = manifest.read(paths)
    assert m.state == "done" and m.executor == "local"
    assert len({m.stages[s].job_id for s in m.stages}) == 3 and all(s.starts == 1 for s in m.stages.values())
    assert m.stages["ingest"].figures.images == 12 and m.stages["train"].figures.epochs == 3
    archive = paths.root / m.stages["compress"].figures.archive
    assert f"{archive}" in out and "CR " in out and "PSNR " in out and f"nervi-hpc decode {archive}" in out
    assert Decoder.open(archive, device="cpu").decode(np.array([[0.0, 60.0, 90.0]])).shape == (1, 16, 16, 3)
    assert (paths.eval_dir / "summary.json").is_file()
    log = paths.job_log(m.stages["train"].job_id).read_text()
    assert "[nervi-hpc] train: done" in log and "Job completed successfully" in log


def test_logs_and_status_verbs(finished, capsys):
    paths, _, folder = finished
    with cluster_file(folder):
        assert main(["logs", paths.root.name[:6], "compress"]) == 0
        assert "compress: done" in capsys.readouterr().out
        assert main(["status", paths.root.name]) == 0
        text = capsys.readouterr().out
        assert "12 images" in text and "epoch 3/3" in text and "archive/tiny.nervi" in text
        assert main(["logs", "nope"]) == 1
        assert "no run 'nope'" in capsys.readouterr().err


def test_same_spec_returns_its_run_unless_new(finished):
    paths, _, folder = finished
    cluster = local_cluster(folder)
    again = lifecycle.submit(write_spec(folder), cluster)
    assert again.paths == paths and not again.created and again.launched == []
    assert "already submitted (done)" in again.summary()
    other = lifecycle.submit(write_spec(folder), cluster, new=True)
    try:
        assert other.created and other.paths.root.name == f"{paths.root.name}-2"
        assert other.launched == ["ingest", "train", "compress"]
    finally:
        lifecycle.cancel(other.paths)
    assert manifest.read(other.paths).state == "cancelled"
    assert lifecycle.submit(write_spec(folder), cluster).paths == paths  # the done run is preferred


def test_fetch_verifies_the_archive_and_refuses_to_overwrite(finished, tmp_path):
    paths, _, _ = finished
    written = fetch(paths, tmp_path / "out")
    assert [p.name for p in written] == ["tiny.nervi", "tiny.summary.json", "tiny.summary.md", "tiny.contact.png"]
    m = manifest.read(paths)
    assert written[0].read_bytes() == (paths.root / m.stages["compress"].figures.archive).read_bytes()
    with pytest.raises(RunError, match="tiny.nervi: exists; not overwriting it"):
        fetch(paths, tmp_path / "out")
    assert fetch(paths, tmp_path / "out", force=True) == written
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="file: not a folder"):
        fetch(paths, tmp_path / "file")
    damaged = RunPaths(tmp_path / "copy")
    shutil.copytree(paths.root, damaged.root, ignore=lambda d, names: ["renders.zarr"])
    archive = damaged.root / m.stages["compress"].figures.archive
    data = bytearray(archive.read_bytes())
    data[-1] ^= 1
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="sha256 differs"):
        fetch(damaged, tmp_path / "other")
    assert not (tmp_path / "other" / "tiny.nervi").exists()


def _submit_in_process(spec: str, folder: str):
    result = lifecycle.submit(spec, local_cluster(Path(folder)))
    return result.paths.root.name, result.created, result.launched


def test_concurrent_submits_of_one_spec_make_one_run(tmp_path):
    spec = write_spec(tmp_path, "race")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        outcomes = pool.starmap(_submit_in_process, [(str(spec), str(tmp_path))] * 4)
    runs = sorted((tmp_path / "storage" / "runs").glob("race-*"))
    assert len(runs) == 1 and {name for name, _, _ in outcomes} == {runs[0].name}
    assert sorted(created for _, created, _ in outcomes) == [False, False, False, True]
    assert [launched for _, created, launched in outcomes if created] == [["ingest", "train", "compress"]]
    lifecycle.cancel(RunPaths(runs[0]))
    assert json.loads((runs[0] / "manifest.json").read_text())["stages"]["train"]["state"] == "cancelled"


def test_killed_run_is_failed_and_resubmitting_resumes_from_its_checkpoint(tmp_path):
    """kill -9 of the driver and its jobs (no manifest update): status reports the scheduler's
    verdict; submitting the spec again resumes training from its checkpoint."""
    cluster = local_cluster(tmp_path)
    spec = write_spec(tmp_path, "crash", epochs=100000, max_minutes=0.15, checkpoint_minutes=0.02)
    paths = lifecycle.submit(spec, cluster).paths
    wait_until(lambda: list(paths.checkpoints.glob("step-*/DONE")), 120, "a training checkpoint")
    m = manifest.read(paths)
    os.killpg(m.driver["pid"], signal.SIGKILL)  # the driver's session: driver, job controller, task
    view = wait_until(lambda: (v := snapshot([paths])[0]).manifest.terminal and v, 30, "the verdict")
    assert view.manifest.state == "failed"
    assert view.manifest.stages["train"].reason.startswith(f"job {m.stages['train'].job_id} ended without")
    step_before = max(int(p.parent.name.split("-")[1]) for p in paths.checkpoints.glob("step-*/DONE"))
    resubmitted = time.time()
    again = lifecycle.submit(spec, cluster)
    assert again.paths == paths and again.launched == ["train", "compress"]
    done = wait_until(lambda: (m := manifest.read(paths)).terminal and m, 180, "the resubmitted run")
    assert done.state == "done", done.reason
    records = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    after = [r for r in records if r["time"] > resubmitted]
    assert step_before > 3 and after[0]["step"] >= step_before  # resumed, not restarted from step 0
    assert done.stages["train"].figures.steps > step_before


def test_local_jobs_see_the_gpus_the_profile_gives(tmp_path):
    """The local executor hides GPUs unless told: `gpus_per_node: auto` gives this machine's."""
    auto = Profile(executor="local", gpus_per_node="auto")
    res = {s: resources.stage_resources(auto, s, machine_gpus=2) for s in ("ingest", "train", "compress")}
    assert [res[s].gpus_per_node for s in ("ingest", "train", "compress")] == [0, 2, 1]
    assert [res[s].tasks_per_node for s in ("ingest", "train", "compress")] == [1, 2, 1]  # a DDP rank per GPU
    cpu_only = resources.stage_resources(auto, "train", machine_gpus=0)
    assert (cpu_only.gpus_per_node, cpu_only.tasks_per_node) == (0, 1)
    executor = submitit.LocalExecutor(folder=tmp_path)
    executor.update_parameters(**local.local_parameters(auto, res["train"]))
    job = executor.submit(submitit.helpers.CommandFunction(["printenv", "CUDA_VISIBLE_DEVICES"]))
    assert [out.strip() for out in job.results()] == ["0,1", "0,1"]  # two tasks, each sees both GPUs


def test_the_local_default_trains_in_one_thread_and_ingests_in_two():
    """The built-in profile and the shipped cluster.yaml's: one training thread (threads spin
    against other jobs on a shared machine), the profile's 2 CPUs for ingest and compress."""
    shipped = load_cluster(Path(__file__).parents[2] / "cluster.yaml")
    for profile in (ClusterConfig().profile(None), shipped.profiles["local"]):
        plan = resources.plan(profile, "local")
        assert [plan[s].cpus_per_task for s in ("ingest", "train", "compress")] == [2, 1, 2]
        assert jobs.job_for("train", RunPaths(Path("run")), plan["train"]).cpus == 1


def test_dry_run_prints_the_chained_sbatch_scripts(tmp_path):
    cluster = ClusterConfig(storage_root=str(tmp_path / "storage"), default_profile="gpu", profiles={
        "gpu": Profile(executor="slurm", partition="gpu", account="proj42", qos="high", nodes=2, gpus_per_node=4,
                       tasks_per_node=4, cpus_per_task=8, mem_gb=120, time_min=720, constraint="a100",
                       mpi="pmix", sbatch={"mail-type": "END,FAIL"}, setup=["module load cuda/12.4"],
                       stages={"ingest": StageResources(partition="cpu", tasks_per_node=16, time_min=60)})})
    text = lifecycle.dry_run(write_spec(tmp_path), cluster)
    ingest, train, compress = (text.split(f"# ---- {s}:")[1].split("# ---- ")[0]
                               for s in ("ingest", "train", "compress"))
    for script in (ingest, train, compress):
        assert "#SBATCH --account=proj42" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
        assert "#SBATCH --mail-type=END,FAIL" in script and "module load cuda/12.4" in script
    assert "#SBATCH --partition=cpu" in ingest and "--ntasks-per-node=16" in ingest and "--mpi=pmix" in ingest
    assert "--gpus-per-node" not in ingest and "--dependency" not in ingest
    assert "#SBATCH --nodes=2" in train and "#SBATCH --gpus-per-node=4" in train and "--time=720" in train
    assert "#SBATCH --dependency='afterok:<ingest job id>'" in train and "--mpi" not in train
    assert "#SBATCH --gpus-per-node=1" in compress and "#SBATCH --ntasks-per-node=1" in compress
    assert "afterok:<train job id>" in compress
    assert not (tmp_path / "storage").exists()


def test_profiles_that_cannot_run_are_refused(tmp_path):
    many = Profile(executor="slurm", gpus_per_node=0, stages={"ingest": StageResources(tasks_per_node=4)})
    with pytest.raises(ConfigError, match="ingest of 4 tasks needs MPI: set `mpi`"):
        resources.plan(many, "cpu")
    with pytest.raises(ConfigError, match="local executor runs on this machine only"):
        resources.plan(Profile(executor="local", nodes=2, gpus_per_node=0), "local")
    (tmp_path / "c.yaml").write_text("profiles: {big: {executor: slurm}}\ndefault_profile: big\n")
    with pytest.raises(ConfigError, match="big: gpus_per_node: 'auto'"):
        load_cluster(tmp_path / "c.yaml")
