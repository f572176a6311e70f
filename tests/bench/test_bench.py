"""`nervi-hpc bench`: a tiny bench end to end (render + ingest, one nervi variant at two bit
depths with and without pruning, two codecs), its report, resuming, --only, --report-only, and
one-line errors for bad specs."""

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from nervi_hpc.bench import runner as bench_module
from nervi_hpc.bench.runner import Bench
from nervi_hpc.bench.spec import NerviVariant
from nervi_hpc.bench.report import near_cr
from nervi_hpc.cli import main
from nervi_hpc.errors import ConfigError

DATASET = {"name": "tiny",
           "source": {"kind": "synthetic", "scene": "tornado", "mode": "ir", "size": 16, "volume": 16,
                      "theta": [30, 60], "phi": [0, 90, 180, 270]},
           "ingest": {"workers": 1},
           "train": {"epochs": 2, "batch_size": 4, "loader_workers": 0, "lr": 0.001}}
TINY_MODEL = {"c1": 8, "c2": 16, "min_channels": 8, "norm": "none"}
SPEC = {"dataset": "tiny.yaml",
        "nervi": [{"label": "tiny", "model": TINY_MODEL, "train": {"epochs": 4}, "bits": [9, 6], "prune": [0.5]}],
        "baselines": [{"codec": "jpeg", "sweep": [90, 30, 5]},
                      {"codec": "webp", "label": "webp-fast", "sweep": [90, 30, 5], "options": {"method": 0}}]}
NERVI_METHODS = ["tiny", "tiny-p0.5", "tiny-b6", "tiny-b6-p0.5"]


@pytest.fixture(autouse=True)
def no_alexnet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def write_spec(folder, spec=SPEC, dataset=DATASET):
    (folder / "tiny.yaml").write_text(yaml.safe_dump(dataset))
    (folder / "bench.yaml").write_text(yaml.safe_dump(spec))
    return folder / "bench.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A bench run once: (spec path, output folder, what it said)."""
    folder = tmp_path_factory.mktemp("bench")
    spec = write_spec(folder)
    said = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(folder / "torch-home"))
        Bench(spec, folder / "out", say=said.append).run()
    return spec, folder / "out", said


def test_a_bench_trains_evaluates_and_reports_every_point(finished):
    spec, out, said = finished
    run = out / "runs" / "tiny"
    assert (run / "renders.zarr").is_symlink() and (run / "renders.zarr").resolve() == (out / "store.zarr").resolve()
    assert yaml.safe_load((run / "dataset.yaml").read_text())["train"]["epochs"] == 4  # the variant's override
    assert json.loads((run / "trained.json").read_text())["epochs"] == 4
    results = json.loads((out / "results.json").read_text())
    got = {(p["method"], p["setting"], p["kind"]) for p in results["points"]}
    assert got == ({(m, "model", "nervi") for m in NERVI_METHODS}
                   | {("jpeg", f"q-{q}", "codec") for q in (90, 30, 5)}
                   | {("webp-fast", f"q-{q}", "codec") for q in (90, 30, 5)})
    for p in results["points"]:
        summary = json.loads((out / "results" / p["method"] / p["setting"] / "summary.json").read_text())
        assert p["cr"] == summary["compression_ratio"] and p["psnr"] == summary["psnr_db"]["mean"]
    by = {(p["method"], p["setting"]): p for p in results["points"]}
    assert by[("tiny-b6", "model")]["cr"] > by[("tiny", "model")]["cr"]          # fewer bits, smaller
    assert by[("tiny-p0.5", "model")]["cr"] > by[("tiny", "model")]["cr"]        # pruned, smaller
    assert by[("jpeg", "q-5")]["cr"] > by[("jpeg", "q-90")]["cr"]
    webp = json.loads((out / "results" / "webp-fast" / "q-30" / "summary.json").read_text())
    assert webp["archive"]["codec"] == "webp-fast" and webp["archive"]["options"]["method"] == 0
    assert set(results["at_cr"]["jpeg"]) == {"100", "300", "700", "1000"}
    assert set(results["bd_rate_percent"]) == set(NERVI_METHODS)
    assert set(results["bd_rate_percent"]["tiny"]) == {"jpeg", "webp-fast"}
    assert results["bd_rate_percent"]["tiny"]["jpeg"]["psnr"] is None  # one nervi point: no curve
    assert results["missing"] == []
    assert any(line.startswith("train tiny") for line in said)


def test_the_report_has_the_tables_and_the_plots(finished):
    _, out, _ = finished
    text = (out / "results.md").read_text()
    for heading in ("## PSNR (dB, whole image) at CR ≈ 100 / 300 / 700 / 1000", "## Foreground PSNR (dB)",
                    "## BD-rate of nervi-hpc against each codec (whole-image PSNR)", "## Points"):
        assert heading in text
    assert "| tiny-b6-p0.5 | nervi |" in text and "| jpeg | q-90 |" in text and "—" in text
    for name in ("rd-psnr.png", "rd-msssim.png"):
        assert Image.open(out / name).format == "PNG"


def test_a_rerun_skips_what_is_finished(finished, monkeypatch):
    spec, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("summary.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was made again")

    monkeypatch.setattr("nervi_hpc.stages.train.train", refuse)
    monkeypatch.setattr(bench_module.baselines, "run", refuse)
    said = []
    Bench(spec, out, say=said.append).run()
    assert sum(line.startswith("skip ") for line in said) == len(before) == 10
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("summary.json")} == before


def test_only_remakes_the_named_label_and_report_only_rebuilds_the_report(finished, monkeypatch):
    spec, out, _ = finished
    removed = out / "results" / "webp-fast" / "q-5" / "summary.json"
    removed.unlink()
    (out / "results.md").unlink()
    assert main(["bench", str(spec), "--out", str(out), "--report-only", "-q"]) == 0
    assert "Not run yet: webp-fast q-5." in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["missing"] == ["webp-fast/q-5"]
    monkeypatch.setattr("nervi_hpc.stages.train.train", lambda *a, **k: pytest.fail("trained again"))
    said = []
    Bench(spec, out, only=["webp-fast"], say=said.append).run()
    assert removed.is_file() and not any("jpeg" in line or "tiny" in line for line in said)
    assert json.loads((out / "results.json").read_text())["missing"] == []


def test_target_crs_make_one_run_each_and_archives_per_bits_and_pruning():
    variant = NerviVariant(label="v", model={"preset": "paper"}, target_cr=[100, 300], bits=[9, 8], prune=[0.2])
    assert variant.runs() == [("cr100", {"preset": "paper", "target_cr": 100}),
                              ("cr300", {"preset": "paper", "target_cr": 300})]
    assert variant.archives() == [("v", 9, None), ("v-p0.2", 9, 0.2), ("v-b8", 8, None), ("v-b8-p0.2", 8, 0.2)]


def test_a_value_near_a_target_cr_stands_for_it_only_within_five_percent():
    assert near_cr([(104.0, 30.0), (300.0, 25.0)], 100) == {"value": 30.0, "cr": 104.0, "nearest": True}
    assert near_cr([(106.0, 30.0), (300.0, 25.0)], 100) is None
    assert near_cr([(100.0, 30.0), (1000.0, 20.0)], 1000 ** 0.5 * 10) == {"value": pytest.approx(25.0),
                                                                           "cr": 1000 ** 0.5 * 10, "nearest": False}


@pytest.mark.parametrize("change, message", [
    ({"nervi": [{"label": "a", "modle": {}}]}, r"nervi\[0\]\.modle: unknown key 'modle'"),
    ({"baselines": ["mpeg2"]}, r"baselines\[0\]: unknown codec 'mpeg2'"),
    ({"baselines": [{"codec": "h264", "options": {"chroma": "422"}}]},
     r"baselines\[0\]\.options\.chroma: bad value '422' \(expected one of 444, 420\)"),
    ({"baselines": ["jpeg", {"codec": "webp", "label": "jpeg"}]}, "label 'jpeg' is used twice"),
    ({"dataset": None, "store": "x.zarr"}, "nervi: variants train with a dataset's settings"),
    ({"nervi": [{"label": "a", "train": {"epochs": 0}}]}, r"nervi a: train\.epochs: bad value 0"),
    ({"nervi": [{"label": "a", "model": {"target_cr": 300}}]}, "give the values in the variant's own target_cr"),
])
def test_bad_specs_are_one_line_errors_naming_the_file(tmp_path, change, message):
    spec = write_spec(tmp_path, {**SPEC, **change})
    with pytest.raises(ConfigError, match=message) as caught:
        Bench(spec, tmp_path / "out")
    assert str(caught.value).startswith(str(spec)) and "\n" not in str(caught.value)


def test_only_an_unknown_label_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--only h265: no such label .*\(tiny, jpeg, webp-fast\)"):
        Bench(write_spec(tmp_path), tmp_path / "out", only=["h265"])


def test_report_tables_show_interpolated_and_nearest_values_and_bd_rates():
    from nervi_hpc.bench.rd import TARGET_CRS, Point, bd_rate
    from nervi_hpc.bench.report import markdown, near_cr

    def point(method, kind, cr, psnr):
        return Point(method, f"s{cr}", kind, cr, psnr, psnr - 5, 0.99, 1.0, 1.0)

    points = [point("nervi", "nervi", cr, q) for cr, q in ((104.0, 36.0), (310.0, 33.0), (690.0, 30.0))]
    points += [point("h264", "codec", cr, q) for cr, q in ((50.0, 40.0), (200.0, 35.0), (1050.0, 27.0))]
    curves = {m: [(p.cr, p.psnr) for p in points if p.method == m] for m in ("nervi", "h264")}
    table = {m: {str(t): {"psnr": near_cr(c, t), "foreground_psnr": None} for t in TARGET_CRS}
             for m, c in curves.items()}
    bd = {"nervi": {"h264": {"psnr": bd_rate(curves["nervi"], curves["h264"]), "foreground_psnr": None}}}
    store = {"images": 800, "width": 256, "height": 256, "path": "store.zarr"}
    text = markdown(Path("b.yaml"), store, points, table, bd, [])
    at_300 = 33.0 + (36.0 - 33.0) * math.log(310 / 300) / math.log(310 / 104)
    assert f"| nervi | nervi | 36.00 (at 104) | {at_300:.2f} | 30.00 (at 690) | — |" in text
    assert "| h264 | codec |" in text and "| — |" not in text.split("| h264 | codec |")[1].splitlines()[0]
    assert f"| nervi | {bd['nervi']['h264']['psnr']:+.1f} % |" in text
    # each archive against the codec at exactly its own CR, and where the sweep does not reach
    h264_at_310 = 35.0 + (27.0 - 35.0) * math.log(310 / 200) / math.log(1050 / 200)
    own = text.split("## Each archive against the codecs at its own CR")[1]
    assert f"| nervi | s310.0 | 310.0 | 33.00 | {h264_at_310:.2f} ({33.0 - h264_at_310:+.2f}) |" in own
    assert "| nervi | s104.0 | 104.0 | 36.00 | " in own


def test_a_report_without_codecs_has_no_bd_rate_table():
    from nervi_hpc.bench.rd import Point
    from nervi_hpc.bench.report import markdown

    points = [Point("a", "cr300", "nervi", 290.0, 30.0, 25.0, 0.99, 60.0, 1.0)]
    table = {"a": {str(t): {"psnr": None, "foreground_psnr": None} for t in (100, 300, 700, 1000)}}
    text = markdown(Path("b.yaml"), {"images": 1, "width": 8, "height": 8, "path": "s"}, points, table, {"a": {}}, [])
    assert "BD-rate" not in text and "| a | cr300 | 290.0 | 30.00 | 25.00 | 0.9900 |" in text


def test_a_variant_trained_to_convergence_gets_a_psnr_against_time_curve(tmp_path):
    spec = {"dataset": "tiny.yaml",
            "nervi": [{"label": "tiny", "model": TINY_MODEL, "max_minutes": 0.05,
                       "train": {"epochs": 100000, "until_gain_db": 0.2, "snapshot_minutes": [0.01, 0.03]}}],
            "baselines": [{"codec": "jpeg", "sweep": [90, 30, 5]}]}
    out = tmp_path / "out"
    Bench(write_spec(tmp_path, spec), out, say=lambda line: None).run()
    results = json.loads((out / "results.json").read_text())
    curve = results["in_time"]["tiny model"]
    assert len(curve) == 3 and curve[0]["minutes"] < curve[1]["minutes"] <= curve[2]["minutes"]  # + the end
    assert curve[2]["psnr"] == results["points"][0]["psnr"]
    assert all(p["cr"] > 0 and p["psnr"] > 5 for p in curve)
    for snapshot in (out / "results" / "tiny" / "model" / "time").iterdir():
        assert json.loads((snapshot / "summary.json").read_text())["compression_ratio"] > 0
    assert "## PSNR against training time" in (out / "results.md").read_text()
    assert Image.open(out / "rd-time.png").format == "PNG"
