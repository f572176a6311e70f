"""Decoder: range errors and unseen flags, the grid, batching, outputs (PNG folder, one PNG,
renders store), parameter lists, untrusted metadata, and the CLI's one-line errors."""

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from tests.stages.test_compress import make_run

from nervi_hpc.cli import main
from nervi_hpc.codec.archive import PREFIX, read_archive
from nervi_hpc.codec.header import ArchiveMeta
from nervi_hpc.data.dataset import normalize
from nervi_hpc.data.store import RenderStore
from nervi_hpc.errors import ArchiveError, ConfigError, ParameterError
from nervi_hpc.model import checkpoint
from nervi_hpc.parameters import parse_assignments, png_name, read_params_csv
from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder, build_model, default_batch_size, pick_device, unseen_notes
from nervi_hpc.stages.decode.outputs import write_outputs


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An archive of a briefly trained model with BatchNorm (so eval mode matters)."""
    run = make_run(tmp_path_factory.mktemp("run"), epochs=3, norm="batch")
    return compress(run, evaluate=False).archive


@pytest.fixture(scope="module")
def decoder(archive):
    return Decoder.open(archive, device="cpu")


def test_out_of_range_values_raise_naming_parameter_value_and_range(decoder):
    with pytest.raises(ParameterError, match=r"^theta=200 is outside the trained range \[30, 120\]$"):
        decoder.decode(np.array([[0.0, 200.0, 0.0]]))
    with pytest.raises(ParameterError, match=r"^t=0.5 \(row 2 of 2\) is outside the trained range \[0, 0\]$"):
        decoder.check(np.array([[0.0, 30.0, 0.0], [0.5, 30.0, 0.0]]))
    with pytest.raises(ParameterError, match="phi=nan"):
        decoder.check(np.array([[0.0, 30.0, np.nan]]))
    with pytest.raises(ParameterError, match=r"rows of 3 values \(t, theta, phi\)"):
        decoder.check(np.zeros((2, 2)))


def test_values_off_the_grid_are_decoded_and_flagged_unseen(decoder):
    rows = np.array([[0.0, 30.0, 90.0], [0.0, 45.0, 90.0], [0.0, 120.0, 135.0]])
    assert decoder.check(rows).tolist() == [False, True, True]
    assert unseen_notes(decoder, rows) == [
        "t=0 theta=45 phi=90 is off the training grid (unseen): decoded by interpolation",
        "t=0 theta=120 phi=135 is off the training grid (unseen): decoded by interpolation"]
    assert decoder.decode(rows).shape == (3, 16, 16, 3)


def test_grid_is_the_training_set(decoder, archive):
    store = RenderStore.open(archive.parent.parent / "renders.zarr")
    grid = decoder.grid()
    assert grid.shape == (16, 3) and not decoder.check(grid).any()
    assert sorted(map(tuple, grid)) == sorted(map(tuple, store.params))


def test_eval_mode_makes_each_image_independent_of_its_batch(decoder, archive):
    grid = decoder.grid()
    together = decoder.decode(grid)
    assert len(np.unique(together.reshape(16, -1), axis=0)) > 1  # not one image repeated
    one_by_one = Decoder.open(archive, device="cpu", batch_size=1).decode(grid)
    assert np.abs(together.astype(int) - one_by_one).max() <= 1  # float summation order only
    odd_batches = Decoder.open(archive, device="cpu", batch_size=5)
    starts = [start for start, *_ in odd_batches.batches(grid)]
    assert starts == [0, 5, 10, 15]
    assert np.abs(odd_batches.decode(grid).astype(int) - together).max() <= 1


def test_hard_compositing_puts_the_background_where_the_mask_is_off(tmp_path):
    run = make_run(tmp_path, epochs=3, composite="hard")
    hard = Decoder.open(compress(run, evaluate=False).archive, device="cpu")
    images, masks = hard.decode_with_masks(hard.grid())
    assert set(np.unique(masks)) <= {0, 1}
    assert (images[masks == 0] == 255).all()


def test_soft_compositing_blends_rgb_over_the_background_by_the_mask(decoder):
    assert decoder.meta.model.composite == "soft"  # the default preset
    grid = decoder.grid()
    with torch.no_grad():
        output = decoder.model(torch.from_numpy(normalize(grid, decoder.meta.ranges)).float())
    rgb, alpha = output[:, :3], ((output[:, 3:] - 0.25) / 0.5).clamp(0, 1)
    expected = (alpha * rgb + (1 - alpha) * 1.0) * 255  # white background
    images = decoder.decode(grid).astype(float)
    assert np.abs(images - expected.permute(0, 2, 3, 1).numpy()).max() <= 0.5 + 1e-3
    assert ((images < 255) & (images > 0)).any()


def test_all_to_a_png_folder(decoder, tmp_path):
    grid = decoder.grid()
    message = write_outputs(decoder, grid, tmp_path / "pngs", progress=False)
    files = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert message == f"wrote 16 PNG images to {tmp_path / 'pngs'}"
    assert files == sorted(png_name(decoder.names, row) for row in grid) and "t0_theta30_phi90.png" in files
    picture = np.asarray(Image.open(tmp_path / "pngs" / "t0_theta30_phi90.png"))
    assert np.array_equal(picture, decoder.decode(np.array([[0.0, 30.0, 90.0]]))[0])


def test_all_to_a_renders_store(decoder, archive, tmp_path):
    grid = decoder.grid()
    write_outputs(decoder, grid, tmp_path / "out.zarr", archive=archive, progress=False)
    store = RenderStore.open(tmp_path / "out.zarr")
    assert store.count == 16 and store.param_names == decoder.names and (store.height, store.width) == (16, 16)
    assert np.array_equal(store.params, grid)
    assert store.background == (255, 255, 255) and store.mode == "ir" and archive.name in store.source
    assert store.grids == {p.name: list(p.grid) for p in decoder.meta.parameters}
    images, masks = store.read(range(16))
    expected = decoder.decode(grid)
    assert np.array_equal(images, expected) and np.array_equal(masks, (expected != 255).any(axis=-1))


def test_one_png_holds_one_image(decoder, tmp_path):
    write_outputs(decoder, np.array([[0.0, 60.0, 0.0]]), tmp_path / "one.png", progress=False)
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (16, 16, 3)
    with pytest.raises(ParameterError, match="one image file holds one image, but 16"):
        write_outputs(decoder, decoder.grid(), tmp_path / "many.png", progress=False)


def test_parameter_input_from_assignments_and_csv(decoder, tmp_path):
    assert parse_assignments(decoder.names, ["phi=90", "t=0", "theta=45"]).tolist() == [[0.0, 45.0, 90.0]]
    with pytest.raises(ParameterError, match="missing parameter 'phi'"):
        parse_assignments(decoder.names, ["t=0", "theta=45"])
    with pytest.raises(ParameterError, match="unknown parameter 'psi'"):
        parse_assignments(decoder.names, ["t=0", "theta=45", "phi=0", "psi=1"])
    with pytest.raises(ParameterError, match="expected name=value"):
        parse_assignments(decoder.names, ["theta"])
    listing = tmp_path / "list.csv"
    listing.write_text("phi, theta,t\n90,45,0\n0,30,0\n")
    assert read_params_csv(listing, decoder.names).tolist() == [[0, 45, 90], [0, 30, 0]]
    listing.write_text("phi,theta,t\n90,45,0\n0,abc,0\n")
    with pytest.raises(ParameterError, match=r"list.csv: line 3 theta: 'abc' is not a number"):
        read_params_csv(listing, decoder.names)
    listing.write_text("phi,theta\n90,45\n")
    with pytest.raises(ParameterError, match=r"list.csv: line 2: missing parameter 't'"):
        read_params_csv(listing, decoder.names)


def test_untrusted_metadata_and_weights_are_refused(archive):
    raw, state, _ = read_archive(archive)
    meta = ArchiveMeta.from_json(raw)
    broken = [({**raw, "format": {"meta_version": 99}}, "meta_version 99"),
              ({**raw, "image": {**raw["image"], "height": 10**9}}, "meta.image.height"),
              ({**raw, "image": {**raw["image"], "count": 17}}, "grids hold 16 points"),
              ({**raw, "model": {**raw["model"], "c1": -1}}, "meta.model.c1"),
              ({**raw, "parameters": raw["parameters"][:1] * 2}, "distinct"),
              ({**raw, "parameters": [{**raw["parameters"][0], "grid": [1.0, 0.0]}] + raw["parameters"][1:]},
               "increasing")]
    for bad, message in broken:
        with pytest.raises(ArchiveError, match=message):
            ArchiveMeta.from_json(json.loads(json.dumps(bad)))
    name = next(iter(state))
    with pytest.raises(ArchiveError, match=f"lacks {name}"):
        build_model(meta, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ArchiveError, match="wrong shapes"):
        build_model(meta, {**state, name: torch.zeros(3)})
    with pytest.raises(ArchiveError, match="unknown tensors extra"):
        build_model(meta, {**state, "extra": torch.zeros(3)})


def test_model_buffers_come_from_the_archive(decoder, archive):
    """BatchNorm's running statistics are decoded (eval mode uses them), not left at 0/1."""
    state, _ = checkpoint.load(checkpoint.latest(archive.parent.parent / "checkpoints"))
    means = [k for k in state["model"] if k.endswith("running_mean")]
    assert means
    for key in means:
        decoded = dict(decoder.model.named_buffers())[key]
        assert not torch.equal(decoded, torch.zeros_like(decoded))
        torch.testing.assert_close(decoded, state["model"][key], atol=1e-2, rtol=1e-2)


def test_a_float_checkpoint_with_integer_buffers_builds_too(decoder, archive):
    """build_model takes a training state dict as is (BatchNorm step counters included), which
    decodes like its 9-bit archive up to quantization error."""
    state, _ = checkpoint.load(checkpoint.latest(archive.parent.parent / "checkpoints"))
    assert any(k.endswith("num_batches_tracked") for k in state["model"])
    float_decoder = Decoder(build_model(decoder.meta, state["model"]), decoder.meta, device="cpu")
    grid = decoder.grid()
    difference = np.abs(float_decoder.decode(grid).astype(int) - decoder.decode(grid))
    assert np.median(difference) <= 1


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device"):
        pick_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")


def test_cli_decodes_and_notes_unseen_values(archive, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = main(["decode", str(archive), "--param", "t=0", "--param", "theta=45", "--param", "phi=90",
                 "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file() and captured.out.strip() == f"wrote {out}"
    assert captured.err == ("note: t=0 theta=45 phi=90 is off the training grid (unseen): "
                            "decoded by interpolation\n")
    assert main(["decode", str(archive), "--all", "-o", str(tmp_path / "all"), "-q"]) == 0
    assert len(list((tmp_path / "all").glob("*.png"))) == 16


def assert_one_line_error(capsys, argv, *parts):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nervi-hpc decode: error: ")
    assert all(part in err for part in parts), err


def test_cli_errors_are_one_line(archive, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert_one_line_error(capsys, ["decode", str(archive), "--param", "t=0", "--param", "theta=45", "-o", out],
                          "missing parameter 'phi'")
    assert_one_line_error(capsys, ["decode", str(archive), "--param", "t=0", "--param", "theta=300",
                                   "--param", "phi=0", "-o", out], "theta=300 is outside the trained range")
    data = archive.read_bytes()
    header_len = struct.unpack_from("<Q", data, 10)[0]
    truncated = tmp_path / "truncated.nervi"
    truncated.write_bytes(data[:PREFIX.size + header_len + 10])
    assert_one_line_error(capsys, ["decode", str(truncated), "--all", "-o", out], str(truncated), "truncated")
    assert_one_line_error(capsys, ["decode", str(archive), "-o", out], "exactly one of --param")


def test_the_default_decode_batch_is_smaller_on_a_cpu_than_on_a_gpu():
    """A CPU decodes fastest with a batch whose activations stay in cache; a GPU wants big ones."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (default_batch_size(256, 256, cpu), default_batch_size(256, 256, gpu)) == (4, 64)
    assert (default_batch_size(1024, 1024, cpu), default_batch_size(1024, 1024, gpu)) == (1, 4)
    assert default_batch_size(8, 8, gpu) == 256  # at most MAX_BATCH images
