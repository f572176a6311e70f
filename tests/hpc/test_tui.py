"""The watch dashboard, rendered to a recording rich Console for runs in every state."""

import json
import re
import time

import pytest
from rich.console import Console

from nervi_hpc.hpc.backends.base import Verdict
from nervi_hpc.hpc.backends.slurm import Slurm
from nervi_hpc.hpc.manifest import StageState
from nervi_hpc.hpc.status import all_runs, snapshot
from nervi_hpc.hpc.tui import dashboard, pick_focus, watch
from nervi_hpc.paths import StoragePaths
from nervi_hpc.stages.figures import CompressFigures, IngestFigures, TrainFigures
from tests.hpc.test_status import make_run

VERDICTS = {"11": Verdict("queued", "PENDING (Resources)"), "22": Verdict("running", "RUNNING"),
            "23": Verdict("queued", "PENDING (Dependency)")}
COMPRESSED = CompressFigures(archive="archive/d.nervi", bytes=60500, sha256="0" * 64, compression_ratio=312.5,
                             bits=9, parameters=50000, psnr=27.25, foreground_psnr=19.5, ms_ssim=0.95)
INGESTED = IngestFigures(images=384, shards=3, raw_bytes=18874368, stored_bytes=2100000, seconds=60.0)


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """Six runs, one per state; the scheduler answers from VERDICTS."""
    monkeypatch.setattr(Slurm, "query", lambda self, ids: {i: VERDICTS[i] for i in ids if i in VERDICTS})
    storage = StoragePaths(tmp_path / "storage")
    make_run(storage, "a-pending")
    make_run(storage, "b-queued", ingest=StageState(state="queued", job_id="11"))
    make_run(storage, "c-running", ingest=StageState(state="done", job_id="21", starts=1, figures=INGESTED),
             train=StageState(state="running", job_id="22", starts=2, started=time.time() - 125, tasks=2),
             compress=StageState(state="queued", job_id="23"))
    running = storage.run("c-running")
    running.logs.mkdir()
    running.metrics.write_text(json.dumps({"epoch": 12, "epochs": 40, "loss": 0.0421, "psnr": 21.37,
                                           "eta_s": 754.0, "elapsed_s": 30.0, "images_per_s": 48.5}) + "\n")
    running.jobs.mkdir()
    running.job_log("22").write_text("".join(f"log line {i}\n" for i in range(30)))
    make_run(storage, "d-done", ingest=StageState(state="done", job_id="31", figures=INGESTED),
             train=StageState(state="done", job_id="32", figures=TrainFigures(epochs=40)),
             compress=StageState(state="done", job_id="33", figures=COMPRESSED))
    make_run(storage, "e-failed", ingest=StageState(state="failed", job_id="41", starts=1,
                                                    reason="/data/x: no such image folder"),
             train=StageState(state="cancelled", job_id="42", reason="not started: ingest failed"),
             compress=StageState(state="cancelled", job_id="43", reason="not started: ingest failed"))
    make_run(storage, "f-cancelled", ingest=StageState(state="done", job_id="51", figures=INGESTED),
             train=StageState(state="cancelled", job_id="52", reason="cancelled by the user"),
             compress=StageState(state="cancelled", job_id="53", reason="cancelled by the user"))
    return storage


def render(storage, focus=None, width=150) -> str:
    console = Console(record=True, width=width, force_terminal=False)
    views = snapshot(all_runs(storage))
    console.print(dashboard(views, pick_focus(views, focus), storage))
    return console.export_text()


def row(text: str, run_id: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(f"{run_id} "))


def test_dashboard_shows_every_run_in_its_state(storage):
    text = render(storage)
    assert "6 run(s)" in text and "1 running" in text and "1 failed" in text and "1 done" in text
    for run_id, state in [("a-pending", "pending"), ("b-queued", "queued"), ("c-running", "running"),
                          ("d-done", "done"), ("e-failed", "failed"), ("f-cancelled", "cancelled")]:
        assert f" {state} " in row(text, run_id)
    running = row(text, "c-running")
    assert "train" in running and "21.37" in running and " ingest " in row(text, "e-failed")
    assert "30% ETA 1m 30s" in running  # epoch 12/40; ETA 754 s at this pace, but the budget leaves 90 s
    done = row(text, "d-done")
    assert "60.5 kB" in done and "312.5" in done and "27.25" in done
    assert text.index("f-cancelled") < text.index("a-pending")  # newest first


def test_focus_panel_shows_stages_progress_and_log_tail(storage):
    text = render(storage)
    assert "╭─ c-running" in text  # the newest active run is in focus
    assert "PENDING (Dependency)" in text and "RUNNING" in text
    assert "running (1 restart)" in text and re.search(r"2m 0[5-9]s", text)  # started 125 s before, under load
    assert "384 images, 3 shards, 2.1 MB" in text
    assert "30% · epoch 12/40 · 30s of a 2m 00s budget · 48.5 img/s" in text
    assert "jobs/22_0_log.out" in text
    assert "log line 29" in text and "log line 17" not in text  # the last 12 lines


def test_a_compressing_run_shows_the_evaluation_progress(storage):
    make_run(storage, "g-compressing", ingest=StageState(state="done", job_id="61", figures=INGESTED),
             train=StageState(state="done", job_id="62", figures=TrainFigures(epochs=40)),
             compress=StageState(state="running", job_id="63", started=time.time() - 20))
    paths = storage.run("g-compressing")
    paths.logs.mkdir()
    record = {"stage": "compress", "time": time.time(), "host": "node7", "step": "evaluate", "images": 96,
              "total": 384, "rss_bytes": 2_500_000_000}
    paths.progress("compress").write_text(json.dumps(record) + "\n")
    text = render(storage, focus="g-c")
    assert "evaluate: 96/384 images" in text
    assert "compress runs on node7 (RSS 2.5 GB)" in text
    paths.progress("compress").write_text(json.dumps({**record, "time": time.time() - 60}) + "\n")
    assert "96/384" not in render(storage, focus="g-c")  # a record older than this start is stale


def test_focus_on_failed_and_done_runs(storage):
    text = render(storage, focus="e-f")
    assert "failed: ingest: /data/x: no such image folder" in text
    assert "not started: ingest failed" in text
    assert "jobs/41_0_log.out" in text and "(no output yet)" in text
    text = render(storage, focus="d-done")
    assert "60.5 kB, CR 312.5, PSNR 27.25 dB → archive/d.nervi" in text


def test_watch_once_and_an_empty_storage(tmp_path, storage):
    console = Console(record=True, width=150)
    watch(storage, once=True, console=console)
    text = console.export_text()
    assert "nervi-hpc watch" in text and "╭─ c-running" in text
    empty = Console(record=True, width=100)
    watch(StoragePaths(tmp_path / "nothing"), once=True, console=empty)
    assert "no runs yet: nervi-hpc submit dataset.yaml" in empty.export_text()
