"""The user's path through the CLI, run as a user runs it (a subprocess per command): checks at
submit, honest endings, the run record through manual stages, progress, the recipient's side."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = {"kind": "synthetic", "scene": "blobs", "mode": "ir", "size": 16, "t": 0,
          "theta": [30, 60, 90], "phi": [0, 90, 180, 270], "volume": 16}


def cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`nervi-hpc ARGS` in a fresh interpreter, one torch thread."""
    return subprocess.run([sys.executable, "-m", "nervi_hpc.cli", *map(str, args)], cwd=cwd or REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def local_cluster(folder: Path) -> dict:
    """Environment for the CLI: a cluster.yaml in `folder` with a one-CPU local profile."""
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump({"storage_root": str(folder / "storage"), "profiles": {
        "local": {"executor": "local", "cpus_per_task": 1, "gpus_per_node": 0, "time_min": 10}}}))
    return {"NERVI_CLUSTER": str(path)}


def write_spec(folder: Path, name="tiny", source=None, model=None, **train) -> Path:
    spec = {"name": name, "source": source or SOURCE, "ingest": {"shard_size": 4, "workers": 1},
            "model": model or {"c1": 8, "c2": 16, "min_channels": 4},
            "train": {"epochs": 3, "batch_size": 4, "loader_workers": 0, **train}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_error_line(ran: subprocess.CompletedProcess) -> str:
    assert ran.returncode == 1, ran.stdout + ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------
# 1. Checked at submit


def test_a_misspelt_source_path_fails_at_submit_and_dry_run_with_the_path(tmp_path):
    env = local_cluster(tmp_path)
    spec = write_spec(tmp_path, source={"kind": "cinema", "path": "renders.cbd"})
    for extra in ([], ["--dry-run"]):
        line = one_error_line(cli("submit", spec, *extra, env=env))
        assert f"{tmp_path / 'renders.cbd'}: no such folder" in line and str(spec) in line
    assert not (tmp_path / "storage" / "runs").exists()


def test_a_target_cr_no_model_fits_fails_at_submit_naming_one_that_does(tmp_path):
    env = local_cluster(tmp_path)
    source = {**SOURCE, "size": 64}
    line = one_error_line(cli("submit", write_spec(tmp_path, source=source, model={"target_cr": 300}), env=env))
    assert "model.target_cr: 300 is out of reach for 12 images of 64×64" in line
    fits = float(line.rsplit("target_cr ", 1)[1].split()[0])
    assert not (tmp_path / "storage" / "runs").exists()
    ran = cli("submit", write_spec(tmp_path, "fits", source=source, model={"target_cr": fits}), "--dry-run", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "checked" in ran.stdout and "12 images of 64×64" in ran.stdout and " parameters" in ran.stdout
    slightly_more = cli("submit", write_spec(tmp_path, "more", source=source, model={"target_cr": fits * 1.2}),
                        "--dry-run", env=env)
    assert "is out of reach" in one_error_line(slightly_more)


# ----------------------------------------------------------------------------------------------
# 8. The example Slurm profile schedules as written


def test_the_example_slurm_profile_keeps_gpu_constraint_and_setup_off_the_cpu_ingest_job(tmp_path):
    ran = cli("submit", "jobs/examples/demo.yaml", "--profile", "slurm", "--dry-run",
              env={"NERVI_CLUSTER": str(REPO / "cluster.yaml")})
    assert ran.returncode == 0, ran.stderr
    ingest, train, compress = (ran.stdout.split(f"# ---- {s}:")[1].split("# ---- ")[0]
                               for s in ("ingest", "train", "compress"))
    assert "#SBATCH --partition=cpu" in ingest and "--constraint" not in ingest
    assert "module load cuda" not in ingest and "source $HOME/nervi-hpc/.venv/bin/activate" in ingest
    for gpu_job in (train, compress):
        assert "#SBATCH --constraint=a100" in gpu_job and "module load cuda/12.4" in gpu_job


# ----------------------------------------------------------------------------------------------
# 9. MPI ingest reports once


@pytest.mark.mpi
def test_mpi_ingest_prints_its_summary_once(tmp_path):
    launcher = Path(sys.executable).parent / "mpiexec"
    if not launcher.exists():
        pytest.skip("no mpiexec in the venv (pip install mpich)")
    ran = cli("render", write_spec(tmp_path), tmp_path / "r.cdb", "-q")
    assert ran.returncode == 0, ran.stderr
    ran = subprocess.run([str(launcher), "-n", "2", sys.executable, "-m", "nervi_hpc.cli", "ingest",
                          tmp_path / "r.cdb", "-o", tmp_path / "r.zarr", "-q", "--shard-size", "4"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("12 images in 3 shards") == 1, ran.stdout


# ----------------------------------------------------------------------------------------------
# 2. Honest endings


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """`submit --wait` of a run whose time budget ends training far short of its 300 epochs:
    (folder, cli environment, run id, submit's output)."""
    folder = tmp_path_factory.mktemp("short")
    env = local_cluster(folder)
    # batch 1 and 60 ms: 12 steps an epoch, so the budget holds fewer than 20 epochs however fast a step is
    ran = cli("submit", write_spec(folder, "short", epochs=300, max_minutes=0.001, batch_size=1), "--wait", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = json.loads(cli("list", "--json", env=env).stdout)[0]["run"]
    return folder, env, run_id, ran.stdout


def test_what_ends_with_a_warning():
    from nervi_hpc.stages.figures import ending_warnings

    assert len(ending_warnings(4, 300, True, 12.0)) == 2  # the run of the issue: 4 of 300 epochs, 12 dB
    assert ending_warnings(33, 1000, True, 24.6) == []  # the demo: time-bound on purpose, it ran its course
    assert ending_warnings(4, 300, False, 30.0) == []  # not stopped by the time limit
    assert "lower model.target_cr" in ending_warnings(300, 300, False, 15.0)[0]


def test_a_run_stopped_far_short_of_its_epochs_ends_with_a_warning_everywhere(short_run):
    folder, env, run_id, waited = short_run
    said = "training stopped at the time limit after epoch"
    assert f"warning: {said}" in waited and "of 300: raise train.max_minutes" in waited
    assert said in cli("status", run_id, env=env).stdout
    listed = cli("list", env=env).stdout
    assert "done ⚠" in listed and f"⚠ {run_id}: {said}" in listed
    summary = (folder / "storage" / "runs" / run_id / "eval" / "summary.md").read_text()
    assert f"**Warning:** {said}" in summary
    status = json.loads(cli("status", run_id, "--json", env=env).stdout)
    assert status["state"] == "done" and any(said in w for w in status["warnings"])
    assert status["manifest"]["stages"]["train"]["figures"]["epochs_planned"] == 300


# ----------------------------------------------------------------------------------------------
# 4. The run record follows every stage


def test_train_and_compress_by_hand_update_the_record_and_resume_trains_on(tmp_path):
    env = local_cluster(tmp_path)
    # epochs far beyond what 0.2 minutes allow: every training here must end at its time limit
    assert cli("submit", write_spec(tmp_path, "more", epochs=30000, max_minutes=0.05), "--wait", env=env).returncode == 0
    run_id = json.loads(cli("list", "--json", env=env).stdout)[0]["run"]
    run_dir = tmp_path / "storage" / "runs" / run_id

    def record():
        return json.loads(cli("status", run_id, "--json", env=env).stdout)["manifest"]["stages"]

    first = record()["train"]["figures"]["epochs"]
    assert cli("fetch", run_id, tmp_path / "shared", env=env).returncode == 0
    for verb, *extra in (("train", "--max-minutes", "0.1", "-q"), ("compress", "-q")):
        ran = cli(verb, run_dir, *extra, env=env)
        assert ran.returncode == 0, ran.stderr
    stages = record()
    assert stages["train"]["figures"]["epochs"] > first and stages["train"]["job_id"] is None
    archive = run_dir / stages["compress"]["figures"]["archive"]
    assert stages["compress"]["figures"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    fetched = cli("fetch", run_id, tmp_path / "shared", "--force", env=env)
    assert fetched.returncode == 0, fetched.stderr  # the fresh archive is not "damaged"

    assert "give --max-minutes M, the run's total training time" in one_error_line(cli("resume", run_id, env=env))
    assert "is the run's total training time" in one_error_line(cli("resume", run_id, "--max-minutes", "0.05",
                                                                    env=env))
    before = record()["train"]["figures"]["epochs"]
    resumed = cli("resume", run_id[:8], "--max-minutes", "0.2", "--wait", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resubmitted train, compress" in resumed.stdout and "done in" in resumed.stdout
    after = json.loads(cli("status", run_id, "--json", env=env).stdout)
    assert after["state"] == "done" and after["manifest"]["train_minutes"] == 0.2
    assert after["manifest"]["stages"]["train"]["figures"]["epochs"] > before
    assert after["training"]["budget_s"] == 12.0


# ----------------------------------------------------------------------------------------------
# 5. Progress wherever people look


def test_jobs_log_progress_lines_that_logs_follow_shows_across_stages(tmp_path):
    env = {**local_cluster(tmp_path), "NERVI_PROGRESS_S": "0"}
    name = "a-rather-long-dataset-name-for-eighty-columns"
    ran = cli("submit", write_spec(tmp_path, name, epochs=300, max_minutes=0.05), env=env)
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(cli("list", "--json", env=env).stdout)[0]["run"]
    followed = cli("logs", run_id, "-f", env=env, timeout=240)
    assert followed.returncode == 0, followed.stderr
    out = followed.stdout
    assert "[nervi-hpc] ingest: 4/12 images" in out and "[nervi-hpc] ingest: 12/12 images" in out
    assert "[nervi-hpc] train: epoch 1/300 · loss " in out and " of 3s · ETA " in out and "(RSS " in out
    assert "[nervi-hpc] compress: evaluate · 12/12 images · " in out
    assert out.count("==> ") == 2 and out.rstrip().endswith("Exiting after successful completion")
    assert out.index("ingest: done") < out.index("train: done") < out.index("compress: done")

    listed = cli("list", env={**env, "COLUMNS": "80"}).stdout  # a pipe, 80 columns
    row = next(line for line in listed.splitlines() if "done" in line)
    assert len(row.rstrip()) <= 80 and "…" in row and "ep" in row and ":" in row.split()[-1]
    shown = row.split()[0].rstrip("…")
    assert run_id.startswith(shown) and cli("status", shown, env=env).returncode == 0


# ----------------------------------------------------------------------------------------------
# 6. The recipient's side


def archive_of(short_run) -> Path:
    folder, _, run_id, _ = short_run
    return folder / "storage" / "runs" / run_id / "archive" / "short.nervi"


def test_info_tells_the_recipient_what_the_archive_holds(short_run):
    archive = archive_of(short_run)
    ran = cli("info", archive)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert f"{archive}: {archive.stat().st_size:,} bytes" in lines[0] and "CR " in lines[0]
    assert "12 images of 16×16 (ir)" in lines[0]
    assert any(line.split() == ["theta", "30", "…", "90,", "3", "values:", "30", "60", "90"] for line in lines)
    assert any("phi" in line and "0 90 180 270; periodic (period 360" in line for line in lines)
    assert any(line.strip().startswith("model: nervi c1=8 c2=16") for line in lines)
    assert any("epochs of 300, stopped at the time limit" in line for line in lines)
    facts = json.loads(cli("info", archive, "--json").stdout)
    assert facts["count"] == 12 and [p["period"] for p in facts["parameters"]] == [None, None, 360.0]


def test_phi_wraps_around_at_decode(short_run, tmp_path):
    archive = archive_of(short_run)

    def view(phi):
        out = tmp_path / f"phi{phi}.png"
        ran = cli("decode", archive, "--param", "t=0", "--param", "theta=60", "--param", f"phi={phi}", "-o", out, "-q")
        assert ran.returncode == 0, ran.stderr
        return out.read_bytes()

    assert view(360) == view(0) and view(-10) == view(350) and view(720 + 90) == view(90)
    assert view(345) != view(0)


def test_decode_writes_a_cinema_database_and_jpegs_and_eval_reads_them_back(short_run, tmp_path):
    from PIL import Image

    archive = archive_of(short_run)
    ran = cli("decode", archive, "--all", "-o", tmp_path / "out.cdb", "-q")
    assert ran.returncode == 0, ran.stderr
    rows = (tmp_path / "out.cdb" / "data.csv").read_text().splitlines()
    assert rows[0] == "t,theta,phi,FILE" and len(rows) == 13
    first = tmp_path / "out.cdb" / rows[1].rsplit(",", 1)[1]
    assert Image.open(first).mode == "RGB"
    assert cli("decode", archive, "--all", "-o", tmp_path / "rgba.cdb", "--rgba", "-q").returncode == 0
    assert Image.open(tmp_path / "rgba.cdb" / first.name).mode == "RGBA"

    for truth in (tmp_path / "out.cdb", tmp_path / "decoded"):
        if truth.name == "decoded":
            assert cli("decode", archive, "--all", "-o", truth, "-q").returncode == 0
        ran = cli("eval", archive, "--store", truth, "-o", tmp_path / f"eval-{truth.name}", "-q")
        assert ran.returncode == 0, ran.stderr
        summary = json.loads((tmp_path / f"eval-{truth.name}" / "summary.json").read_text())
        assert summary["psnr_db"]["infinite"] == 12 and summary["store"]["path"] == str(truth)

    one = ["--param", "t=0", "--param", "theta=60", "--param", "phi=90"]
    assert cli("decode", archive, *one, "-o", tmp_path / "x.jpg", "-q").returncode == 0
    assert Image.open(tmp_path / "x.jpg").format == "JPEG" and (tmp_path / "x.jpg").is_file()
    line = one_error_line(cli("decode", archive, *one, "-o", tmp_path / "x.tif", "-q"))
    assert "x.tif: decode writes .png or .jpg images" in line and not (tmp_path / "x.tif").exists()
    assert "one image file holds one image" in one_error_line(cli("decode", archive, "--all", "-o", tmp_path / "a.jpg"))
