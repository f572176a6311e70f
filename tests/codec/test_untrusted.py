"""Forged archives with valid checksums (issue 16): every one is refused from its header, before
the work or memory it asks for, with one ArchiveError line naming the file and the field; and
decoding never turns non-finite network outputs into images."""

import base64
import contextlib
import json
import signal

import numpy as np
import pytest
from tests.codec.test_fuzz import fuzz

from nervi_hpc.codec import archive
from nervi_hpc.errors import ArchiveError, ConfigError
from nervi_hpc.stages.decode.decoder import Decoder, Limits, frame_elements


@contextlib.contextmanager
def deadline(seconds: float):
    """TimeoutError when the block runs longer (what used to hang fails instead of stalling)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fuzz.write_base(tmp_path_factory.mktemp("base") / "base.nervi")


def forged(base, tmp_path, edit, name="forged.nervi"):
    """`base` with `edit(header)` applied (it may return a new payload), checksums recomputed."""
    header, payload = fuzz.split(base.read_bytes())
    payload = edit(header) or payload
    path = tmp_path / name
    path.write_bytes(fuzz.frame(header, payload))
    return path


def refused(path, match, **kw):
    with deadline(10), pytest.raises(ArchiveError) as caught:
        Decoder.open(path, device="cpu", **kw)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert match in message, message
    return message


def fit_codec(header):
    """The codec's tensors rewritten to the declared model's shapes, as a one-symbol stream:
    what is left to stop such a file is the reader's budget."""
    return fuzz.fit_codec(header, fuzz.declared_shapes(header["meta"]))


def test_a_million_grid_levels_is_refused_at_once(base, tmp_path):
    path = forged(base, tmp_path, lambda h: h["meta"]["model"].update(grid_levels=10**6))
    refused(path, "meta.model.grid_levels: bad value 1000000 (expected an integer in 1..16)")


@pytest.mark.parametrize("field, value", [
    ("c1", 2**63), ("c2", 2**63), ("min_channels", 2**63), ("grid_features", 2**63),
    ("grid_size", [2**63] * 3), ("channel_decay", 1e155), ("omega0", 1e308), ("pe_levels", 10**6),
    ("upscale", [2] * 10**4), ("periods", [0, 0, 2**1100])])
def test_huge_model_values_are_refused_naming_the_field(base, tmp_path, field, value):
    path = forged(base, tmp_path, lambda h: h["meta"]["model"].update({field: value}))
    refused(path, f"meta.model.{field}")


@pytest.mark.parametrize("value, problem", [([0, 2**1100], "finite numbers"), ([-1e308, 1e308], "finite span")])
def test_parameter_ranges_must_be_finite_with_a_finite_span(base, tmp_path, value, problem):
    def edit(header):
        header["meta"]["parameters"][1]["range"] = value
        header["meta"]["parameters"][1]["grid"] = [0.0]
        header["meta"]["parameters"] = header["meta"]["parameters"]
    path = forged(base, tmp_path, edit)
    refused(path, problem)


@pytest.mark.parametrize("side", [8192, 16384])
def test_a_tiny_file_declaring_huge_images_is_refused_by_the_frame_budget(base, tmp_path, side):
    def edit(header):
        header["meta"]["image"].update(height=side, width=side)
        header["meta"]["model"].update(stem=None, upscale=None)
        return fit_codec(header)
    path = forged(base, tmp_path, edit)
    assert path.stat().st_size < 64 << 10
    refused(path, f"one {side}×{side} image needs", limits=Limits(memory_bytes=2 << 30))


def test_shapes_and_the_weight_budget_are_checked_before_the_payload_is_read(base, tmp_path):
    """A one-symbol table makes 1 bit a weight; a forged wide model is refused from its header.
    The payloads here are zeros with a wrong checksum: refused first for what the header says
    means refused before the payload is checksummed, decoded or dequantized."""
    def unread(header, payload_bytes):
        header["codec"].update(payload_bytes=payload_bytes, payload_sha256="0" * 64)
        path = tmp_path / "forged.nervi"
        path.write_bytes(archive._frame(json.dumps(header).encode(), bytes(payload_bytes)))
        return path

    header, payload = fuzz.split(base.read_bytes())
    header["meta"]["model"].update(c1=1024, c2=2048)
    wide = unread(header, len(fit_codec(header)))
    message = refused(wide, "weights need", limits=Limits(memory_bytes=64 << 20))
    assert message.endswith("over the budget of 0.06 GiB (NERVI_MAX_MEMORY_MB)")

    header, payload = fuzz.split(base.read_bytes())
    header["codec"]["tensors"][0]["shape"].append(1)
    refused(unread(header, len(payload)), "the weights do not fit the model: it has wrong shapes for")


def test_a_code_table_larger_than_its_symbols_is_refused(base, tmp_path):
    def edit(header):
        header["codec"]["code_table"] = {"symbols": list(range(512)), "lengths": [9] * 512}
        header["codec"]["symbols"] = 0
        for entry in header["codec"]["tensors"]:
            entry["shape"] = [0]
    refused(forged(base, tmp_path, edit), "code table has 512 entries for 0 symbols")


def test_overflowing_or_non_finite_weights_never_decode(base, tmp_path):
    def overflow(header):
        entry = header["codec"]["tensors"][0]
        channels = len(base64.b64decode(entry["min"])) // 4
        entry["min"], entry["scale"] = fuzz.b64_floats([3e38] * channels), fuzz.b64_floats([1e36] * channels)
    refused(forged(base, tmp_path, overflow), "min + 511·scale overflows float32")

    def negative_variance(header):
        entry = next(t for t in header["codec"]["tensors"] if t["name"].endswith("running_var"))
        entry["min"], entry["scale"] = fuzz.b64_floats([-5.0]), fuzz.b64_floats([0.0])
    refused(forged(base, tmp_path, negative_variance), "a BatchNorm variance is negative")

    def huge(header):  # finite weights whose activations overflow: the output check catches them
        for entry in header["codec"]["tensors"]:
            if entry["name"].startswith("upscale.0.0."):
                channels = len(base64.b64decode(entry["min"])) // 4
                entry["min"], entry["scale"] = fuzz.b64_floats([1e38] * channels), fuzz.b64_floats([0.0] * channels)
    path = forged(base, tmp_path, huge)
    decoder = Decoder.open(path, device="cpu")
    with pytest.raises(ArchiveError, match=rf"^{path}: the network gives non-finite values for t=0 theta=30 phi=0"):
        decoder.decode(decoder.grid()[:1])


def test_decode_all_refuses_more_images_or_pixels_than_the_limits(base, monkeypatch):
    decoder = Decoder.open(base, device="cpu")
    assert decoder.grid().shape == (24, 3)
    monkeypatch.setenv("NERVI_MAX_IMAGES", "10")
    limited = Decoder.open(base, device="cpu")
    with pytest.raises(ArchiveError, match=rf"^{base}: declares 24 images, more than the 10 one decode may take"):
        limited.grid()
    small = Decoder(decoder.model, decoder.meta, device="cpu", info=decoder.info, limits=Limits(output_bytes=10_000))
    with pytest.raises(ArchiveError, match=rf"^{base}: declares 24 images of 16×16, 0.00 GiB of pixels, more "
                                           r"than the 0.00 GiB one decode may write \(NERVI_MAX_OUTPUT_GB\)"):
        small.grid()


def test_limits_come_from_the_environment_and_bound_the_batch(base):
    assert (Limits.from_env({"NERVI_MAX_MEMORY_MB": "64", "NERVI_MAX_IMAGES": "5", "NERVI_MAX_OUTPUT_GB": "2"})
            == Limits(64 << 20, 5, 2 << 30))
    with pytest.raises(ConfigError, match=r"\$NERVI_MAX_MEMORY_MB: 'lots' is not a positive integer"):
        Limits.from_env({"NERVI_MAX_MEMORY_MB": "lots"})
    decoder = Decoder.open(base, device="cpu")
    per_image = frame_elements(decoder.model.config, 16, 16) * 4 * 3
    tight = Limits(memory_bytes=3 * per_image + 1)
    assert tight.batch_size(decoder.model.config, 16, 16) == 3
    with pytest.raises(ConfigError, match=r"--batch-size: must be an integer in 1..3"):
        Decoder(decoder.model, decoder.meta, device="cpu", batch_size=4, limits=tight)
