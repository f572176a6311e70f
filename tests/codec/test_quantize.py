"""Post-training quantization: error bounds, one range per tensor, dropped buffers, model outputs."""

import numpy as np
import pytest
import torch
from torch import nn

from nervi_hpc.codec.quantize import QuantizedModel, as_archived, dequantize, quantize
from nervi_hpc.errors import ModelError


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    model.train()
    for _ in range(3):  # non-trivial BatchNorm running statistics
        model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
    return model.eval()


def random_state(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv": torch.randn(6, 3, 3, 3, generator=g) * torch.logspace(-3, 1, 6).view(6, 1, 1, 1),
            "linear": torch.randn(5, 7, generator=g),
            "bias": torch.randn(11, generator=g) * 10,
            "scalar": torch.tensor(0.25)}


def flat(tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().numpy().reshape(-1)


@pytest.mark.parametrize("bits", range(2, 17))
def test_error_is_at_most_half_a_step_at_every_bit_depth(bits):
    state = random_state(bits)
    q = quantize(state, bits)
    restored = dequantize(q)
    for name, tensor in state.items():
        t = q.tensors[name]
        assert t.symbols.dtype == np.uint16 and t.symbols.size == tensor.numel()
        assert t.symbols.max() <= (1 << bits) - 1
        error = np.abs(flat(restored[name]) - flat(tensor))
        bound = float(t.scale[0]) / 2 + 4 * np.finfo(np.float32).eps * np.abs(flat(tensor)).max()
        assert (error <= bound).all(), name


def test_each_tensor_has_one_range():
    state = random_state()
    q = quantize(state, 9)
    for name, tensor in state.items():
        t = q.tensors[name]
        values = flat(tensor)
        assert t.minimum.dtype == np.float32 and t.scale.dtype == np.float32
        assert t.minimum.shape == t.scale.shape == (1,) and t.rows == 1
        np.testing.assert_array_equal(t.minimum, [np.float32(values.min())])
        np.testing.assert_array_equal(t.scale, [np.float32((values.max() - values.min()) / 511)])


def test_extremes_map_to_the_end_symbols():
    q = quantize({"w": torch.tensor([[-2.0, 0.1, 3.0], [5.0, 6.0, 7.0]])}, 4)
    np.testing.assert_array_equal(q.tensors["w"].symbols[[0, 5]], [0, 15])
    np.testing.assert_array_equal(dequantize(q)["w"].reshape(-1)[[0, 5]], [-2.0, 7.0])


def test_constant_tensors_are_exact():
    state = {"const": torch.full((4, 5), 0.3), "zeros": torch.zeros(7)}
    q = quantize(state, 9)
    restored = dequantize(q)
    for name in state:
        assert torch.equal(restored[name], state[name]), name
        assert not q.tensors[name].scale.any()


def test_empty_tensors_round_trip():
    state = {"none": torch.zeros(0, 5), "rows": torch.zeros(3, 0), "flat": torch.zeros(0)}
    restored = dequantize(quantize(state, 9))
    assert {name: t.shape for name, t in restored.items()} == {name: t.shape for name, t in state.items()}


def test_other_float_dtypes_are_recorded_and_come_back_as_float32():
    state = {"half": torch.randn(4, 4).half(), "bf": torch.randn(3).bfloat16(), "double": torch.randn(2, 2).double()}
    q = quantize(state, 8)
    assert [t.dtype for t in q.tensors.values()] == ["float16", "bfloat16", "float64"]
    assert all(t.dtype == torch.float32 for t in dequantize(q).values())


def test_integer_buffers_are_dropped_and_the_rest_loads_non_strictly():
    model = small_model()
    q = quantize(model.state_dict(), 9)
    assert q.dropped == ("1.num_batches_tracked",)
    assert "1.running_mean" in q.tensors and "1.running_var" in q.tensors
    result = small_model().load_state_dict(dequantize(q), strict=False)
    assert set(result.missing_keys) <= set(q.dropped) and not result.unexpected_keys


def test_dequantised_model_matches_the_float_model_and_the_formula():
    model = small_model()
    x = torch.randn(4, 3, 8, 8)
    q = quantize(model.state_dict(), 9)
    quantised = small_model()
    quantised.load_state_dict(dequantize(q), strict=False)
    with torch.no_grad():
        reference, output = model(x), quantised(x)
    assert (output - reference).abs().max() < 0.02 * reference.abs().max()
    assert not torch.equal(output, reference)
    # The same weights computed here from min + μ·scale give exactly the same outputs.
    by_formula = small_model()
    formula = {}
    for name, t in q.tensors.items():
        symbols = torch.from_numpy(t.symbols.astype(np.float32)).view(len(t.minimum), -1)
        values = torch.from_numpy(t.minimum)[:, None] + symbols * torch.from_numpy(t.scale)[:, None]
        formula[name] = values.view(t.shape)
    by_formula.load_state_dict(formula, strict=False)
    with torch.no_grad():
        assert torch.equal(by_formula(x), output)


def test_bits_per_parameter_counts_quantised_parameters_only():
    q = quantize(small_model().state_dict(), 9)
    expected = sum(p.numel() for n, p in small_model().state_dict().items() if p.is_floating_point())
    assert q.parameter_count == expected
    assert q.bits_per_parameter(expected) == pytest.approx(8.0)
    assert isinstance(q, QuantizedModel) and q.bits == 9


@pytest.mark.parametrize("bits", [1, 17, 9.0, True, "9"])
def test_invalid_bit_depths_are_refused(bits):
    with pytest.raises(ModelError, match="bits"):
        quantize({"w": torch.randn(3)}, bits)


def test_non_finite_weights_are_refused_with_the_tensor_name():
    with pytest.raises(ModelError, match="'bad'"):
        quantize({"ok": torch.randn(3), "bad": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ModelError, match="'huge'"):
        quantize({"huge": torch.tensor([-1e300, 1e300], dtype=torch.float64)})


@pytest.mark.parametrize("bits", [3, 7, 9])
def test_as_archived_gives_the_weights_the_archive_returns(bits):
    torch.manual_seed(bits)
    state = {"conv": torch.randn(6, 4, 3, 3), "bias": torch.randn(6) * 5, "flat": torch.full((3, 2), 0.25)}
    restored = dequantize(quantize(state, bits))
    for name, tensor in state.items():
        step = (tensor.amax() - tensor.amin()) / ((1 << bits) - 1)
        torch.testing.assert_close(as_archived(tensor, bits), restored[name], atol=float(step) * 1e-3 + 1e-6, rtol=0)
