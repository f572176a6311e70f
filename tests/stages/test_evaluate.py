"""Evaluation: summary.json schema and arithmetic, JSON-valid infinities, MS-SSIM at reduced
scales, LPIPS refused without genuine weights, CIELUV ΔE, the contact sheet and the CLI."""

import csv
import hashlib
import json
import math

import lpips
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as reference_ms_ssim
from tests.stages.test_compress import make_run

from nervi_hpc.cli import main
from nervi_hpc.data.store import RenderStore
from nervi_hpc.errors import StoreError
from nervi_hpc.model.loss import psnr
from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder
from nervi_hpc.stages.decode.outputs import write_outputs
from nervi_hpc.stages.evaluate import metrics as evaluate_module
from nervi_hpc.stages.evaluate.colour import colour_map, delta_e_uv, srgb_to_luv
from nervi_hpc.stages.evaluate.measure import default_eval_dir, evaluate
from nervi_hpc.stages.evaluate.metrics import (ALEXNET_WEIGHTS, MS_SSIM_WEIGHTS, MsSsimPlan, load_lpips,
                                               ms_ssim, ms_ssim_plan)
from nervi_hpc.stages.evaluate.sheet import SheetRow, contact_sheet

STATS = {"mean", "median", "min", "max", "count", "infinite", "undefined"}


@pytest.fixture(autouse=True)
def no_alexnet_weights(tmp_path, monkeypatch):
    """Every test sees an empty torch hub: LPIPS must then be reported unavailable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), epochs=20)


@pytest.fixture(scope="module")
def archive(run):
    return compress(run, evaluate=False).archive


@pytest.fixture(scope="module")
def report(run, archive, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("empty-torch-home")))
        result = evaluate(archive, run / "renders.zarr", run / "eval", device="cpu", progress=False)
    return result


def strict_json(path):
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def per_image_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_json_schema(report, run, archive):
    summary = strict_json(run / "eval" / "summary.json")
    assert summary == report.figures
    assert set(summary) == {"schema_version", "producer", "archive", "store", "compression_ratio", "psnr_db",
                            "foreground_psnr_db", "ms_ssim", "lpips", "timing", "contact_sheet_rows", "files", "warnings"}
    assert summary["schema_version"] == 1
    assert set(summary["archive"]) == {"path", "bytes", "bits", "parameters", "bits_per_parameter"}
    assert set(summary["store"]) == {"path", "images", "height", "width", "raw_bytes"}
    for key in ("psnr_db", "foreground_psnr_db"):
        assert set(summary[key]) == STATS
    assert set(summary["ms_ssim"]) == STATS | {"standard", "scales", "window", "weights", "note"}
    assert set(summary["lpips"]) == STATS | {"available", "net", "reason", "how_to_enable"}
    assert set(summary["timing"]) == {"encode_seconds", "decode_seconds", "images_per_second", "device",
                                      "precision", "batch_size"}
    assert [row["label"] for row in summary["contact_sheet_rows"]] == ["worst", "median", "best"]
    for stats in (summary["psnr_db"], summary["foreground_psnr_db"], summary["ms_ssim"]):
        assert all(isinstance(stats[k], float) for k in ("mean", "median", "min", "max"))
        assert stats["min"] <= stats["median"] <= stats["max"] and stats["count"] == 16
    assert isinstance(summary["timing"]["decode_seconds"], float)
    assert summary["timing"]["device"] == "cpu" and summary["timing"]["precision"] == "float32"
    assert summary["timing"]["encode_seconds"] == Decoder.open(archive).meta.training["seconds"] > 0
    assert all((run / "eval" / name).is_file() for name in summary["files"].values())


def test_size_figures_are_the_archive_and_store_arithmetic(report, archive):
    f = report.figures
    size = archive.stat().st_size
    info = Decoder.open(archive).info
    assert f["archive"]["bytes"] == size and f["store"]["raw_bytes"] == 16 * 16 * 16 * 3
    assert f["compression_ratio"] == 16 * 16 * 16 * 3 / size
    assert f["archive"]["parameters"] == info.parameter_count
    assert f["archive"]["bits_per_parameter"] == 8 * size / info.parameter_count
    assert f["timing"]["images_per_second"] == pytest.approx(16 / f["timing"]["decode_seconds"])


def test_per_image_figures_are_recomputable(report, run, archive):
    rows = per_image_rows(run / "eval" / "per_image.csv")
    store = RenderStore.open(run / "renders.zarr")
    truth, masks = store.read(range(16))
    decoded = Decoder.open(archive, device="cpu").decode(store.params)
    assert len(rows) == 16 and [float(rows[i]["theta"]) for i in range(16)] == store.params[:, 1].tolist()
    x, y = (torch.from_numpy(a).permute(0, 3, 1, 2).double() for a in (truth, decoded))
    whole = psnr(x / 255, y / 255, per_image=True).numpy()
    assert [float(r["psnr_db"]) for r in rows] == pytest.approx(whole.tolist(), abs=1e-9)
    assert report.figures["psnr_db"]["mean"] == pytest.approx(whole.mean())
    k = 5
    inside = masks[k].astype(bool)
    mse = ((truth[k][inside].astype(float) - decoded[k][inside]) ** 2).mean() / 255 ** 2
    assert float(rows[k]["foreground_psnr_db"]) == pytest.approx(-10 * math.log10(mse))
    assert int(rows[k]["foreground_pixels"]) == inside.sum()
    assert all(r["lpips"] == "" for r in rows)
    worst = min(range(16), key=lambda i: float(rows[i]["psnr_db"]))
    assert report.figures["contact_sheet_rows"][0]["index"] == worst


def test_identical_images_give_json_valid_infinite_psnr(run, archive, tmp_path):
    """Against a store of its own decoded images every PSNR is +inf: JSON gets null + counts."""
    decoder = Decoder.open(archive, device="cpu")
    write_outputs(decoder, decoder.grid(), tmp_path / "decoded.zarr", archive=archive, progress=False)
    result = evaluate(archive, tmp_path / "decoded.zarr", tmp_path / "eval", progress=False)
    summary = strict_json(tmp_path / "eval" / "summary.json")
    assert summary["psnr_db"] == {"mean": None, "median": None, "min": None, "max": None, "count": 0,
                                  "infinite": 16, "undefined": 0}
    assert summary["ms_ssim"]["mean"] == pytest.approx(1.0)
    assert all(row["identical"] and row["psnr_db"] is None for row in summary["contact_sheet_rows"])
    assert {r["psnr_db"] for r in per_image_rows(tmp_path / "eval" / "per_image.csv")} == {"inf"}
    assert "16 identical" in (tmp_path / "eval" / "summary.md").read_text()
    assert "PSNR n/a" in result.summary()


def test_lpips_is_unavailable_here_with_the_reason_and_the_fix(report):
    lp = report.figures["lpips"]
    assert lp["available"] is False and lp["mean"] is None and lp["net"] == "alex"
    assert ALEXNET_WEIGHTS in lp["reason"] and "missing" in lp["reason"]
    assert "hub/checkpoints" in lp["how_to_enable"] and "TORCH_HOME" in lp["how_to_enable"]
    assert "LPIPS unavailable" in report.summary()


def test_lpips_refuses_a_file_that_is_not_the_imagenet_backbone(tmp_path, monkeypatch):
    fake = tmp_path / "torch-home" / "hub" / "checkpoints" / ALEXNET_WEIGHTS
    fake.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.randn(64, 3, 11, 11)}, fake)
    built = []
    monkeypatch.setattr(lpips, "LPIPS", lambda *a, **kw: built.append(kw))
    model, reason = load_lpips(torch.device("cpu"))
    assert model is None and built == []  # never built, so never with a random backbone
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()[:8]
    assert reason == (f"{fake} is not torchvision's AlexNet ImageNet weights "
                      f"(sha256 {digest}…, expected 7be5be79…)")


def test_lpips_figures_when_the_backbone_loads(run, archive, tmp_path, monkeypatch):
    """The reporting path, with a stand-in for the metric (no ImageNet weights on this machine):
    a file accepted by its checksum prefix, and an LPIPS replaced by mean |a − b|."""
    content = b"stand-in backbone"
    name = f"alexnet-owt-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    monkeypatch.setattr(evaluate_module, "ALEXNET_WEIGHTS", name)
    (tmp_path / "torch-home" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch-home" / "hub" / "checkpoints" / name).write_bytes(content)

    class StandIn(torch.nn.Module):
        def forward(self, a, b, normalize):
            assert normalize and 0 <= a.min() and a.max() <= 1
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(lpips, "LPIPS", lambda net, verbose: StandIn())
    result = evaluate(archive, run / "renders.zarr", tmp_path / "eval", progress=False)
    lp = result.figures["lpips"]
    assert lp["available"] and lp["reason"] is None and lp["how_to_enable"] is None and lp["count"] == 16
    store = RenderStore.open(run / "renders.zarr")
    truth, _ = store.read(range(16))
    decoded = Decoder.open(archive).decode(store.params)
    expected = np.abs(truth.astype(float) - decoded).mean(axis=(1, 2, 3)) / 255
    got = [float(r["lpips"]) for r in per_image_rows(tmp_path / "eval" / "per_image.csv")]
    assert got == pytest.approx(expected.tolist(), rel=1e-5) and lp["mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert f"LPIPS {lp['mean']:.4f}" in result.summary()


def test_ms_ssim_uses_fewer_scales_for_small_images_and_says_so(report):
    assert ms_ssim_plan(256, 256) == MsSsimPlan(5, 11, MS_SSIM_WEIGHTS, None)
    small = ms_ssim_plan(64, 40)
    assert (small.scales, small.window) == (2, 11) and sum(small.weights) == pytest.approx(1)
    assert small.weights[0] / small.weights[1] == pytest.approx(MS_SSIM_WEIGHTS[0] / MS_SSIM_WEIGHTS[1])
    assert "2 scales" in small.note and "64×40" in small.note
    assert (ms_ssim_plan(8, 8).scales, ms_ssim_plan(8, 8).window) == (1, 7)
    m = report.figures["ms_ssim"]
    assert m["standard"] is False and m["scales"] == 1 and "16×16" in m["note"]


def test_reduced_ms_ssim_matches_the_package_when_given_all_five_scales():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 168, 168) * 255
    y = (x + torch.randn_like(x) * 20).clamp(0, 255)
    five_scales_by_hand = MsSsimPlan(5, 11, MS_SSIM_WEIGHTS, "computed by the reduced-scale path")
    torch.testing.assert_close(ms_ssim(x, y, five_scales_by_hand),
                               reference_ms_ssim(x, y, data_range=255, size_average=False))


def test_cieluv_values_and_delta_e():
    luv = srgb_to_luv(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(luv[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(luv[1], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(luv[2], [53.24, 175.01, 37.76], atol=0.02)  # sRGB red in CIELUV (D65)
    a = np.zeros((4, 5, 3), np.uint8)
    b = a.copy()
    b[1, 2] = (255, 0, 0)
    delta = delta_e_uv(a, b)
    assert delta.shape == (4, 5) and delta[1, 2] == pytest.approx(np.linalg.norm([53.24, 175.01, 37.76]), abs=0.05)
    assert np.count_nonzero(delta) == 1


def test_contact_sheet_shows_truth_decoded_and_the_error_scale(report, run):
    sheet = np.asarray(Image.open(run / "eval" / "contact.png"))
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[0] > 3 * 192
    truth = np.full((16, 16, 3), 255, np.uint8)
    truth[4:8, 4:8] = (10, 200, 30)
    rows = [SheetRow("only", truth, truth, np.full((16, 16), 40.0))]
    drawn = contact_sheet(rows, vmax=20, title="t")
    green = np.all(drawn == (10, 200, 30), axis=-1)
    assert green.sum() == 2 * (4 * 12) ** 2  # two tiles, each 16 px enlarged 12× (nearest)
    saturated = np.all(drawn == colour_map(np.array(1.0)), axis=-1)
    assert saturated.sum() >= (16 * 12) ** 2  # ΔE 40 on a 0..20 scale is the top colour
    np.testing.assert_array_equal(colour_map(np.array([0.0, 1.0])), [[0, 0, 4], [252, 255, 164]])


def test_store_of_another_collection_is_refused(archive, tmp_path, make_store):
    other = make_store("other.zarr", size=32)
    with pytest.raises(StoreError, match="are not what"):
        evaluate(archive, other, tmp_path / "eval", progress=False)


def test_cli_eval_writes_beside_the_run(archive, run, capsys):
    assert default_eval_dir(archive) == run / "eval"
    assert default_eval_dir(run / "elsewhere.nervi") == run / "elsewhere-eval"
    assert main(["eval", str(archive), "--store", str(run / "renders.zarr"), "-q", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("PSNR ") and str(run / "eval" / "summary.json") in out
