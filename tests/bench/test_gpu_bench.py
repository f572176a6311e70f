"""benchmarks/gpu.py at tiny sizes on the CPU: it runs, and every figure it writes is real."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu.py"


def test_the_gpu_check_runs_on_a_cpu_and_writes_finite_figures(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--compile", "off", "--train-epochs", "3",
                    "--rd-minutes", "0.02", "--threads", "1", "--json", str(out)], check=True, capture_output=True)
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["precision"] == "float32"
    assert [(r["case"], r["compile"]) for r in figures["train"]] == [("grid-32", False), ("paper-64", False)]
    for row in figures["train"]:
        assert math.isfinite(row["steady_images_per_s"]) and row["steady_images_per_s"] > 0
        assert row["epochs"] == 3 and row["parameters"] > 0 and math.isfinite(row["psnr"])
        assert row["peak_device_mb"] is None  # no device memory to measure on a CPU
    assert {(r["case"], r["batch"]) for r in figures["decode"]} >= {("grid-32", 1), ("paper-64", 1)}
    assert all(math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0 for r in figures["decode"])
    rd = figures["rd"]
    assert rd["compression_ratio"] > 0 and math.isfinite(rd["psnr"]) and 0 < rd["minutes"] < 1
    reasons = {s["part"]: s["reason"] for s in figures["skipped"]}
    assert "ddp" not in figures and "NCCL" in reasons["ddp"] and reasons["train with compile"] == "--compile off"
    assert figures["peak_rss_mb"] > 0
