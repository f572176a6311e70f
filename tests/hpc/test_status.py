"""Run state (manifest), the scheduler's verdict winning over a stale manifest, training progress,
fetch refusals. No jobs run here: runs are manifests written by the tests."""

import json
import socket
import subprocess
import sys
import time

import pytest

from nervi_hpc.cli import main
from nervi_hpc.errors import RunError, SchedulerError
from nervi_hpc.hpc import lifecycle, manifest
from nervi_hpc.hpc.backends.base import Verdict
from nervi_hpc.hpc.backends.slurm import Slurm
from nervi_hpc.hpc.manifest import Manifest, StageState
from nervi_hpc.hpc.reconcile import apply_verdicts
from nervi_hpc.hpc.results import fetch
from nervi_hpc.hpc.status import snapshot, training_progress
from nervi_hpc.paths import StoragePaths
from nervi_hpc.stages.figures import IngestFigures, TrainFigures


def make_run(storage: StoragePaths, run_id: str, executor: str = "slurm", **stages) -> Manifest:
    """A run folder with a manifest whose stages are given as StageState keyword arguments."""
    paths = storage.run(run_id)
    paths.root.mkdir(parents=True)
    paths.spec.write_text("name: x\nsource: {kind: synthetic}\ntrain: {max_minutes: 2}\n")
    m = Manifest(run_id=run_id, name="x", spec_sha256="0" * 64, profile="p", executor=executor,
                 created=time.time())
    for stage, record in stages.items():
        m.stages[stage] = record
    manifest.write(paths, m)
    return m


@pytest.fixture
def storage(tmp_path):
    return StoragePaths(tmp_path / "storage")


def test_run_state_follows_its_stages():
    m = Manifest("r", "x", "0" * 64, "p", "slurm", 0.0)
    assert m.state == "pending" and m.active_stage == "ingest"
    m.submitted("ingest", "7", 1)
    m.submitted("train", "8", 2)
    assert m.state == "queued" and m.stages["train"].tasks == 2
    assert m.started("ingest") and m.state == "running"
    m.finished("ingest", IngestFigures(images=3))
    assert m.state == "queued" and m.active_stage == "train"
    assert m.started("train") and m.started("train")  # a requeued job starts again
    assert m.stages["train"].restarts == 1
    m.failed("train", "RuntimeError: boom")
    assert m.state == "failed" and m.reason == "train: RuntimeError: boom"
    assert m.stages["compress"].state == "cancelled"
    assert m.stages["compress"].reason == "not started: train failed"


def test_cancelled_stage_stays_cancelled():
    m = Manifest("r", "x", "0" * 64, "p", "local", 0.0)
    m.finished("ingest", None)
    for stage in ("ingest", "train", "compress"):
        m.cancelled(stage, "cancelled by the user")
    assert m.stages["ingest"].state == "done"  # a finished stage is not undone
    assert not m.started("train")  # a job that starts after the cancel must not run
    m.finished("train", TrainFigures(epochs=1))
    m.failed("compress", "late")
    assert m.state == "cancelled" and m.stages["train"].state == "cancelled"


def test_manifest_round_trip_and_bad_files(storage):
    make_run(storage, "r1", ingest=StageState(state="done", job_id="5", figures=IngestFigures(images=4)))
    paths = storage.run("r1")
    again = manifest.read(paths)
    assert again.stages["ingest"].figures == IngestFigures(images=4) and again.state == "pending"
    assert again.to_json() == json.loads(paths.manifest.read_text())
    paths.manifest.write_text("{not json")
    with pytest.raises(RunError, match="manifest.json: not valid JSON"):
        manifest.read(paths)
    paths.manifest.write_text(json.dumps({**again.to_json(), "stages": {"ingest": {"state": "lost"}}}))
    with pytest.raises(RunError, match="malformed manifest"):
        manifest.read(paths)
    with pytest.raises(RunError, match="no run here"):
        manifest.read(storage.run("nothing"))


def test_runs_are_found_by_unique_prefix(storage):
    make_run(storage, "demo-aaaa1111")
    make_run(storage, "demo-aaaa1111-2")
    make_run(storage, "other-bbbb")
    assert manifest.resolve(storage, "oth").root.name == "other-bbbb"
    assert manifest.resolve(storage, "demo-aaaa1111").root.name == "demo-aaaa1111"  # exact wins
    with pytest.raises(RunError, match="ambiguous"):
        manifest.resolve(storage, "demo")
    with pytest.raises(RunError, match="no run 'zzz'"):
        manifest.resolve(storage, "zzz")


@pytest.mark.parametrize("row, state, words", [
    (["PENDING", "Dependency"], "queued", "PENDING (Dependency)"),
    (["RUNNING", "None"], "running", "RUNNING"),
    (["COMPLETED", "None", "0:0"], "done", "COMPLETED"),
    (["CANCELLED by 0", "None", "0:15"], "cancelled", "CANCELLED by 0"),
    (["OUT_OF_MEMORY", "OutOfMemory", "0:125"], "failed", "OUT_OF_MEMORY (OutOfMemory), exit 0:125"),
    (["TIMEOUT", "TimeLimit", "0:0"], "failed", "TIMEOUT (TimeLimit)"),
])
def test_slurm_states_map_onto_run_states(row, state, words):
    assert Slurm._verdict(row) == Verdict(state, words)


def test_verdicts_win_over_a_stale_manifest(storage):
    m = make_run(storage, "r", ingest=StageState(state="done", job_id="1"),
                 train=StageState(state="running", job_id="2", starts=1),
                 compress=StageState(state="queued", job_id="3"))
    paths = storage.run("r")
    (paths.jobs).mkdir()
    paths.job_log("2").write_text("epoch 3\nKilled\n")
    assert not apply_verdicts(m, {"2": Verdict("running", "RUNNING"), "3": Verdict("queued", "PENDING")}, paths)
    assert apply_verdicts(m, {"2": Verdict("failed", "OUT_OF_MEMORY (OutOfMemory)"),
                              "3": Verdict("cancelled", "CANCELLED (Dependency)")}, paths)
    assert m.state == "failed"
    assert m.stages["train"].reason == "job 2 died: OUT_OF_MEMORY (OutOfMemory); log: Killed"
    assert m.stages["compress"].state == "cancelled"
    gone = make_run(storage, "g", train=StageState(state="running", job_id="9"))
    assert apply_verdicts(gone, {"9": Verdict("gone", "unknown to Slurm")}, storage.run("g"))
    assert gone.stages["train"].reason == "job 9 ended without recording a result: unknown to Slurm"


def test_status_shows_the_schedulers_verdict_for_a_job_that_died(storage, monkeypatch, capsys, tmp_path):
    """The manifest says running, but Slurm says the job failed: status says failed, and
    records it, instead of showing `running` forever."""
    make_run(storage, "dead-run", ingest=StageState(state="done", job_id="41"),
             train=StageState(state="running", job_id="42", starts=1),
             compress=StageState(state="queued", job_id="43"))
    answers = {"squeue": {"42": ["NODE_FAIL", "None"]}, "sacct": {"43": ["CANCELLED", "Dependency", "0:0"]}}
    monkeypatch.setattr(Slurm, "_table", staticmethod(lambda command: answers[command[0]]))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"storage_root: {storage.root}\n")
    monkeypatch.setenv("NERVI_CLUSTER", str(cluster))
    assert main(["status", "dead"]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "NODE_FAIL" in out and "running" not in out
    recorded = manifest.read(storage.run("dead-run"))
    assert recorded.state == "failed" and recorded.stages["compress"].state == "cancelled"


def test_local_run_whose_processes_died_is_failed(storage):
    """A local run whose driver and job were killed (no manifest update) is failed from here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(storage, "loc", executor="local", ingest=StageState(state="running", job_id=str(dead.pid)))
    paths = storage.run("loc")
    manifest.update(paths, lambda m: setattr(m, "driver", {"pid": dead.pid, "host": socket.gethostname()}))
    view = snapshot([paths])[0]
    assert view.manifest.state == "failed"
    assert view.manifest.stages["ingest"].reason.startswith(f"job {dead.pid} ended without recording a result")
    assert view.manifest.stages["train"].state == "cancelled"


def test_list_shows_the_verdict_but_rewrites_no_manifest(storage, monkeypatch, capsys):
    """`list` (like `watch`) only reads: a dead job shows as failed, the manifest stays as it was."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(storage, "ro", executor="local", ingest=StageState(state="running", job_id=str(dead.pid)))
    paths = storage.run("ro")
    manifest.update(paths, lambda m: setattr(m, "driver", {"pid": dead.pid, "host": socket.gethostname()}))
    before = paths.manifest.read_bytes()
    cluster = storage.root.parent / "cluster.yaml"
    cluster.write_text(f"storage_root: {storage.root}\n")
    monkeypatch.setenv("NERVI_CLUSTER", str(cluster))
    assert main(["list"]) == 0
    assert "failed" in capsys.readouterr().out
    assert paths.manifest.read_bytes() == before
    assert snapshot([paths], record=False)[0].manifest.state == "failed"
    assert paths.manifest.read_bytes() == before


def test_local_run_on_another_host_is_left_alone(storage):
    make_run(storage, "far", executor="local", ingest=StageState(state="running", job_id="1"))
    paths = storage.run("far")
    manifest.update(paths, lambda m: setattr(m, "driver", {"pid": 1, "host": "some-other-host"}))
    assert snapshot([paths])[0].manifest.state == "running"
    with pytest.raises(SchedulerError, match="cancel it there"):
        lifecycle.cancel(paths)


def test_training_progress_reads_the_metrics_tail(storage):
    make_run(storage, "t", train=StageState(state="running", job_id="1"))
    paths = storage.run("t")
    assert training_progress(paths) is None
    paths.logs.mkdir()
    records = [{"epoch": e, "epochs": 40, "loss": 0.5 / e, "psnr": 20 + e, "eta_s": 1000.0, "elapsed_s": 100.0,
                "images_per_s": 50.0} for e in (1, 2, 3)]
    paths.metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 4, "ep')
    progress = training_progress(paths)
    assert (progress.epoch, progress.epochs, progress.psnr) == (3, 40, 23.0)
    assert progress.eta_s == pytest.approx(20.0)  # max_minutes 2 → 120 s budget, 100 s used


def test_fetch_refuses_an_unfinished_run(storage, tmp_path):
    make_run(storage, "busy", train=StageState(state="running", job_id="1"))
    with pytest.raises(RunError, match="busy: running; there is no archive to fetch yet"):
        fetch(storage.run("busy"), tmp_path / "out")
