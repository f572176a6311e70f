"""compress: checkpoint → quantized archive whose decode matches the model in memory, its
metadata, the CR arithmetic and the one-line summary. `make_run` is shared with test_decode.py
and test_evaluate.py."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.scenes import DiskScene

from nervi_hpc.codec.archive import read_header
from nervi_hpc.codec.header import ArchiveMeta
from nervi_hpc.codec.quantize import dequantize, quantize
from nervi_hpc.config import DatasetSpec
from nervi_hpc.data.store import RenderStore
from nervi_hpc.errors import ConfigError, NerviError
from nervi_hpc.model import checkpoint
from nervi_hpc.model.loss import psnr
from nervi_hpc.schema import build
from nervi_hpc.stages.compress import archive_meta, compress
from nervi_hpc.stages.decode.decoder import Decoder, build_model
from nervi_hpc.stages.ingest.run import ingest
from nervi_hpc.stages.train import train

TINY_MODEL = {"c1": 8, "c2": 16, "min_channels": 8, "norm": "none"}


def make_run(root: Path, epochs: int, size: int = 16, **model) -> Path:
    """A run folder: a 16-image DiskScene store (large disks, which a tiny model learns in a few
    seconds) and a model trained on it for `epochs`."""
    ingest(DiskScene.grid(size=size, radius=0.4), root / "renders.zarr", shard_size=4, workers=1, progress=False)
    spec = build(DatasetSpec, {"name": "tiny", "source": {"kind": "synthetic"}, "model": {**TINY_MODEL, **model},
                               "train": {"loader_workers": 0, "epochs": epochs, "batch_size": 4, "lr": 1e-3}})
    train(root, spec, progress=False)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), epochs=100)


@pytest.fixture(scope="module")
def compressed(run):
    return compress(run)


def in_memory_decoder(run: Path, bits: int | None) -> Decoder:
    """A decoder of the latest checkpoint's weights held in memory: as trained (bits None) or
    quantized to `bits` and dequantized, without any file."""
    state, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    meta = archive_meta(state, config, "in-memory", RenderStore.open(run / "renders.zarr"), bits or 32, {})
    weights = state["model"] if bits is None else dequantize(quantize(state["model"], bits))
    return Decoder(build_model(meta, weights), meta, device="cpu")


def store_psnr(decoder: Decoder, store: RenderStore) -> float:
    truth, _ = store.read(range(store.count))
    decoded = decoder.decode(store.params)
    return psnr(torch.from_numpy(decoded).float() / 255, torch.from_numpy(truth).float() / 255).item()


def test_archive_decodes_bit_identical_images_to_the_quantized_model_in_memory(run, compressed):
    grid = Decoder.open(compressed.archive, device="cpu").grid()
    from_file = Decoder.open(compressed.archive, device="cpu").decode(grid)
    in_memory = in_memory_decoder(run, bits=9).decode(grid)
    assert from_file.dtype == np.uint8 and from_file.shape == (16, 16, 16, 3)
    assert np.array_equal(from_file, in_memory)


def test_9_bit_quantization_costs_under_a_tenth_of_a_db(run):
    store = RenderStore.open(run / "renders.zarr")
    float_psnr = store_psnr(in_memory_decoder(run, bits=None), store)
    assert float_psnr > 20  # the model did learn the disks (background alone gives ≈ 12 dB)
    assert abs(store_psnr(in_memory_decoder(run, bits=9), store) - float_psnr) < 0.1
    assert float_psnr - store_psnr(in_memory_decoder(run, bits=3), store) > 0.1  # the check can fail


def test_archive_meta_describes_the_collection_and_the_training(run, compressed):
    header = read_header(compressed.archive)  # the reader rejects NaN/Infinity: strict JSON
    meta = ArchiveMeta.from_json(header["meta"])
    store = RenderStore.open(run / "renders.zarr")
    state, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    assert meta.names == ("t", "theta", "phi")
    assert [list(p.grid) for p in meta.parameters] == [store.grids[n] for n in meta.names]
    assert meta.ranges == [store.ranges[n] for n in meta.names]
    assert (meta.height, meta.width, meta.count, meta.bits) == (16, 16, 16, 9)
    assert meta.background == (255, 255, 255) and meta.mode == "ir" and meta.points is None
    assert meta.model == config.model
    logged = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()][-1]
    assert meta.training == {"dataset": "tiny", "checkpoint": checkpoint.latest(run / "checkpoints").name,
                             "epochs": 100, "epochs_planned": 100, "steps": 400, "seconds": state["seconds"],
                             "loss": logged["loss"], "psnr": logged["psnr"], "stopped_early": False,
                             "peak_lr": config.peak_lr}
    assert config.peak_lr == 1e-3  # lr auto at the tiny model's width
    assert ArchiveMeta.from_json(meta.to_json()) == meta
    assert np.array_equal(np.sort(meta.grid(), axis=0), np.sort(store.params, axis=0))


def test_points_are_stored_when_the_training_set_is_not_a_full_grid(tmp_path, run):
    rows = np.array([[0.0, 30.0, 0.0], [0.0, 60.0, 90.0], [0.0, 120.0, 0.0]])
    ingest(DiskScene(("t", "theta", "phi"), rows, (16, 16), "ir", (255, 255, 255), 0, "holes"),
           tmp_path / "holes.zarr", workers=1, progress=False)
    state, config = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    config = dataclasses.replace(config, ranges=((0.0, 0.0), (30.0, 120.0), (0.0, 90.0)))
    meta = archive_meta(state, config, "step", RenderStore.open(tmp_path / "holes.zarr"), 9, {})
    assert meta.count == 3 and np.array_equal(meta.grid(), rows)
    assert ArchiveMeta.from_json(meta.to_json()).points == tuple(map(tuple, rows.tolist()))


def test_compression_ratio_and_the_summary_line(run, compressed):
    size = compressed.archive.stat().st_size
    assert compressed.archive == run / "archive" / "tiny.nervi" and compressed.bytes == size
    assert compressed.compression_ratio == 16 * 16 * 16 * 3 / size
    assert compressed.bits_per_parameter == 8 * size / compressed.parameters
    assert compressed.parameters == sum(v.numel() for v in in_memory_decoder(run, None).model.state_dict().values()
                                        if v.is_floating_point())
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["compression_ratio"] == compressed.compression_ratio
    line = compressed.summary()
    assert "\n" not in line and str(compressed.archive) in line and f"{size:,} bytes" in line
    assert f"CR {compressed.compression_ratio:.1f}" in line and f"PSNR {summary['psnr_db']['mean']:.2f} dB" in line


def test_compress_names_the_archive_and_can_skip_evaluation(run):
    result = compress(run, bits=6, name="six", evaluate=False)
    assert result.archive.name == "six.nervi" and result.evaluation is None and "not evaluated" in result.summary()
    assert Decoder.open(result.archive).meta.bits == 6
    with pytest.raises(ConfigError, match="plain file name"):
        compress(run, name="../escape", evaluate=False)


def test_compress_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(NerviError, match="no complete checkpoint"):
        compress(tmp_path)


def test_a_model_sized_for_a_target_cr_gives_an_archive_of_at_least_that_cr(tmp_path):
    """target_cr is the ratio of the file the user gets: header, tables and all."""
    store = tmp_path / "renders.zarr"
    ingest(DiskScene.grid(size=64, radius=0.4), store, shard_size=4, workers=1, progress=False)
    for target in (2, 4):
        root = tmp_path / f"cr{target}"
        root.mkdir()
        (root / "renders.zarr").symlink_to(store, target_is_directory=True)
        spec = build(DatasetSpec, {"name": f"cr{target}", "source": {"kind": "synthetic"},
                                   "model": {"preset": "hinervi", "target_cr": target},
                                   "train": {"loader_workers": 0, "epochs": 1, "batch_size": 4}})
        train(root, spec, progress=False)
        result = compress(root, evaluate=False)
        assert target <= result.compression_ratio < target * 1.25, (target, result.compression_ratio)
