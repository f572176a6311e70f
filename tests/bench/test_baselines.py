"""Baseline codecs: each round-trips a tiny store with plausible, quality-ordered figures in the
summary.json schema of `nervi-hpc eval`; frames follow the serpentine walk and come back to the
right images; SZ3 keeps its error bound; bad settings are refused."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from nervi_hpc.bench.baselines import CODECS, codec, run, serpentine_order
from nervi_hpc.bench.baselines.video import VideoOptions
from tests.scenes import DiskScene
from nervi_hpc.data.store import RenderStore
from nervi_hpc.errors import ConfigError
from nervi_hpc.stages.ingest.run import ingest

EVAL_KEYS = {"schema_version", "producer", "archive", "store", "compression_ratio", "psnr_db",
             "foreground_psnr_db", "ms_ssim", "lpips", "timing", "contact_sheet_rows", "files"}


@pytest.fixture(autouse=True)
def no_alexnet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """8 distinct 32² images: 2 theta × 4 phi."""
    path = tmp_path_factory.mktemp("store") / "renders.zarr"
    ingest(DiskScene.grid(size=32, theta=(30.0, 60.0), phi=(0.0, 90.0, 180.0, 270.0)), path,
           shard_size=4, workers=1, progress=False)
    return RenderStore.open(path)


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("name", [name for name, c in CODECS.items() if len(c.sweep) > 1])
def test_each_codec_round_trips_with_quality_ordered_figures(name, store, tmp_path):
    c = codec(name)
    best, worst = c.sweep[0], c.sweep[-1]
    high = run(c, store, best, tmp_path / "high", threads=1).figures
    low = run(c, store, worst, tmp_path / "low", threads=1).figures
    assert high == summary(tmp_path / "high")
    assert set(high) == EVAL_KEYS
    assert set(high["archive"]) == {"path", "bytes", "codec", "encoder", "setting", "options"}
    assert high["archive"]["path"] is None and high["archive"]["setting"] == c.setting(best)
    assert high["compression_ratio"] == 8 * 32 * 32 * 3 / high["archive"]["bytes"]
    assert 1 < high["compression_ratio"] < low["compression_ratio"]
    assert high["psnr_db"]["mean"] > low["psnr_db"]["mean"] > 10
    assert high["psnr_db"]["count"] + high["psnr_db"]["infinite"] == 8
    assert high["ms_ssim"]["mean"] >= low["ms_ssim"]["mean"]
    assert high["timing"]["encode_seconds"] > 0 and high["timing"]["threads"] == 1
    assert (tmp_path / "high" / "contact.png").is_file()
    assert f"{name} {c.setting(best)}" in (tmp_path / "high" / "summary.md").read_text()


def test_phi_mean_decodes_every_view_as_the_mean_of_its_theta(store, tmp_path):
    c = codec("phi-mean")
    figures = run(c, store, c.sweep[0], tmp_path, threads=1).figures
    truth, _ = store.read(range(8))
    theta = store.params[:, store.param_names.index("theta")]
    encoded = c.encode(store, c.sweep[0], c.Options(), 1)
    decoded = np.empty_like(truth)
    for indices, images in encoded.decode():
        decoded[indices] = images
    for value in np.unique(theta):
        group = theta == value
        assert (decoded[group] == np.rint(truth[group].mean(axis=0))).all()
    assert figures["archive"]["bytes"] == encoded.nbytes == sum(map(len, encoded.files))
    assert len(encoded.files) == 2 and figures["archive"]["setting"] == "mean"
    assert 10 < figures["psnr_db"]["mean"] < 60


def test_phi_mean_needs_a_phi_parameter():
    store = SimpleNamespace(path="renders.zarr", param_names=("t", "theta"))
    with pytest.raises(ConfigError, match="renders.zarr has no phi parameter"):
        codec("phi-mean").encode(store, 0.0, None, 1)


@pytest.mark.parametrize("name", ["hevc", "sz3"])
def test_per_image_figures_belong_to_the_right_images(name, store, tmp_path):
    """Video and SZ3 code the images in serpentine order: each decoded image must be compared
    with its own ground truth."""
    c = codec(name)
    value = c.sweep[2]
    run(c, store, value, tmp_path, threads=1)
    decoded = np.empty((8, 32, 32, 3), np.uint8)
    for indices, images in c.encode(store, value, c.Options(), 1).decode():  # deterministic encoders
        decoded[indices] = images
    truth, _ = store.read(range(8))
    mse = ((truth.astype(float) - decoded) ** 2).mean(axis=(1, 2, 3))
    with open(tmp_path / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["phi"]) for r in rows] == store.params[:, 2].tolist()
    assert [float(r["psnr_db"]) for r in rows] == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_serpentine_order_walks_the_grid_one_step_at_a_time(tmp_path):
    path = tmp_path / "renders.zarr"
    ingest(DiskScene.grid(size=8, t=(0.0, 1.0), theta=(30.0, 60.0), phi=(0.0, 90.0, 180.0)), path,
           shard_size=4, workers=1, progress=False)
    store = RenderStore.open(path)
    order = serpentine_order(store)
    assert order.tolist() == [0, 1, 2, 5, 4, 3, 9, 10, 11, 8, 7, 6]
    steps = np.abs(np.diff(store.params[order], axis=0))
    assert ((steps > 0).sum(axis=1) == 1).all()  # one parameter changes per frame, by one grid step
    assert set(steps.max(axis=0)) <= {1.0, 30.0, 90.0}


def test_serpentine_order_places_images_by_grid_position_not_store_order():
    grid = [(t, p) for t in (0.0, 1.0) for p in (10.0, 20.0, 30.0)]
    shuffled = [grid[i] for i in (4, 0, 5, 2, 1)]  # a partial grid (t=1, p=10 missing), shuffled
    store = SimpleNamespace(params=np.array(shuffled), param_names=("t", "p"),
                            grids={"t": [0.0, 1.0], "p": [10.0, 20.0, 30.0]})
    walked = [shuffled[i] for i in serpentine_order(store)]
    assert walked == [(0.0, 10.0), (0.0, 20.0), (0.0, 30.0), (1.0, 30.0), (1.0, 20.0)]


def test_sz3_keeps_its_absolute_error_bound(store):
    encoded = codec("sz3").encode(store, 0.05, codec("sz3").Options(chunk=3), 1)
    assert len(encoded.streams) == 3  # 8 images in chunks of 3
    truth, _ = store.read(range(8))
    for indices, images in encoded.decode():
        error = np.abs(images.astype(int) - truth[indices])
        assert error.max() <= 0.05 * 255 + 0.5
    assert [i.tolist() for i, _ in encoded.decode({5})] != []  # the chunk holding image 5 only
    assert len(list(encoded.decode({5}))) == 1


def test_420_video_needs_an_even_image_size(make_store):
    odd = RenderStore.open(make_store(size=33))
    with pytest.raises(ConfigError, match="h264: 4:2:0 video needs an even image size.*33×33"):
        codec("h264").encode(odd, 30, VideoOptions(chroma="420"), 1)
    with pytest.raises(ConfigError, match="av1: 4:2:0"):
        codec("av1").encode(odd, 30, codec("av1").Options(), 1)


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown codec 'mpeg2' \(codecs: h264, hevc, av1, avif"):
        codec("mpeg2")


def test_x264_and_x265_are_tuned_for_psnr_unless_told_otherwise():
    h264, hevc = codec("h264"), codec("hevc")
    assert h264.encoder_options(30, VideoOptions(), 2) == {"crf": "30", "threads": "2", "tune": "psnr"}
    assert h264.encoder_options(30, VideoOptions(tune=None, preset="slow"), 1) == {"crf": "30", "threads": "1",
                                                                                    "preset": "slow"}
    assert hevc.encoder_options(24, VideoOptions(), 1)["x265-params"].startswith("pools=1:")
    assert "tune" not in codec("av1").encoder_options(40, codec("av1").Options(), 1)


def test_measuring_refuses_a_decoding_that_misses_images(store):
    from nervi_hpc.stages.evaluate.measure import measure

    truth, _ = store.read(range(8))
    with pytest.raises(ValueError, match=r"images 3, 7 were not decoded"):
        measure(store, [(np.array([0, 1, 2, 4, 5, 6]), truth[[0, 1, 2, 4, 5, 6]])])
