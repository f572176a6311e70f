"""Global magnitude pruning: which weights it zeroes, and compress(prune=…) archives."""

import pytest
import torch
from tests.stages.test_compress import make_run

from nervi_hpc.codec.prune import prune
from nervi_hpc.errors import ModelError
from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder


def state():
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(8, 4, 3, 3), "conv.bias": torch.randn(8),
            "linear.weight": torch.randn(16, 8) * 0.1, "norm.weight": torch.randn(8) * 0.01,
            "norm.num_batches_tracked": torch.tensor(3)}


def test_prune_zeroes_the_globally_smallest_weights_and_keeps_biases_and_norms():
    original = state()
    pruned = prune(original, 0.4)
    weights = ("conv.weight", "linear.weight")
    total = sum(original[n].numel() for n in weights)
    zeroed = torch.cat([(pruned[n] == 0).flatten() for n in weights])
    assert zeroed.sum().item() == round(0.4 * total)
    magnitudes = torch.cat([original[n].abs().flatten() for n in weights])
    assert magnitudes[zeroed].max() < magnitudes[~zeroed].min()  # the smallest, pooled over tensors
    # global, not per tensor: the small-valued linear layer loses far more than 40 %
    assert (pruned["linear.weight"] == 0).float().mean() > 0.9 > 0.4 > (pruned["conv.weight"] == 0).float().mean()
    kept = torch.cat([(pruned[n] == original[n]).flatten() for n in weights])
    assert (kept | zeroed).all()
    for name in ("conv.bias", "norm.weight", "norm.num_batches_tracked"):
        assert torch.equal(pruned[name], original[name])
    assert original["conv.weight"].ne(0).all()  # the input is not modified


def test_prune_nothing_and_bad_fractions():
    original = state()
    assert all(torch.equal(prune(original, 0)[n], original[n]) for n in original)
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ModelError, match="prune: bad fraction"):
            prune(original, bad)


def test_compress_with_pruning_writes_a_smaller_archive_that_says_so(tmp_path):
    run = make_run(tmp_path, epochs=10)
    plain = compress(run, name="plain", evaluate=False)
    pruned = compress(run, name="pruned", evaluate=False, prune=0.6)
    assert pruned.bytes < plain.bytes and pruned.parameters == plain.parameters
    decoder = Decoder.open(pruned.archive, device="cpu")
    assert decoder.meta.training["pruned"] == 0.6 and "pruned" not in Decoder.open(plain.archive).meta.training
    assert decoder.decode(decoder.grid()).shape == (16, 16, 16, 3)
