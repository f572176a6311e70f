"""NeRVI / NeRV network: size, upscale plan, shapes, config round trip, inference rule, training step."""

import dataclasses
import json
import math

import pytest
import torch

from nervi_hpc.errors import ModelError
from nervi_hpc.model.compositing import composite, to_uint8
from nervi_hpc.model.config import MAX_FACTOR, MAX_STEM_CELLS, ModelConfig, plan_upscale
from nervi_hpc.model.layers import GeluLayer, PositionalEncoding, SineLayer
from nervi_hpc.model.network import NeRVI, count_parameters
from nervi_hpc.model.sizing import model_config, preset
from nervi_hpc.model.spec import ModelSpec

TINY = ModelConfig(c1=8, c2=16, min_channels=4)


def build(config, height, width, params, device="cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        return NeRVI(config, height, width, params)


# ----------------------------------------------------------------------------------------------
# Size of the paper's model


def design_parameter_count(c1, c2, params, levels, stem, factors, out_channels):
    """The count the paper's architecture implies, layer by layer."""
    def linear(i, o):
        return i * o + o

    def residual(i, o):
        return linear(i, o) + linear(o, o) + (linear(i, o) if i != o else 0)

    cells = stem[0] * stem[1]
    total = residual(params * 2 * levels, c1) + residual(c1, c1 * cells)
    width = c1
    for k, s in enumerate(factors):
        out = c2 // 2 ** k
        total += 9 * width * out * s * s + out * s * s + 2 * out  # conv weight + bias, BatchNorm
        width = out
    return total + linear(width, out_channels)


def test_paper_model_at_1024_has_101m_parameters():
    model = build(preset("paper", 1024, 1024), 1024, 1024, 3, device="meta")
    count = count_parameters(model)
    print(f"paper model at 1024², P=3: {count:,} parameters")
    assert count == design_parameter_count(128, 1024, 3, 4, (2, 2), (4, 4, 2, 2, 2, 2, 2), 4)
    assert abs(count - 101e6) / 101e6 < 0.005


def test_paper_preset_is_the_paper():
    config = preset("paper", 256, 256)
    assert (config.arch, config.c1, config.c2, config.pe_levels, config.omega0, config.norm) == \
        ("nervi", 128, 1024, 4, 30.0, "batch")
    assert config.channels(len(config.upscale)) == [1024, 512, 256, 128, 64]


def test_unknown_preset():
    with pytest.raises(ModelError, match="presets: paper, nerv"):
        preset("huge", 64, 64)


# ----------------------------------------------------------------------------------------------
# Upscale plan


@pytest.mark.parametrize("size, expected", [
    (1024, (2, 2, (4, 4, 2, 2, 2, 2, 2))),
    (256, (2, 2, (4, 4, 2, 2, 2))),
])
def test_plan_reproduces_the_paper(size, expected):
    assert plan_upscale(size, size) == expected


@pytest.mark.parametrize("height, width", [(400, 400), (600, 600), (800, 800), (1080, 1920), (64, 64),
                                           (48, 80), (16, 16), (8, 8), (100, 300)])
def test_plan_covers_common_sizes(height, width):
    h0, w0, factors = plan_upscale(height, width)
    total = math.prod(factors)
    assert (h0 * total, w0 * total) == (height, width)
    assert factors and all(2 <= s <= MAX_FACTOR for s in factors)
    assert list(factors) == sorted(factors, reverse=True)
    assert h0 * w0 <= MAX_STEM_CELLS


def test_plan_overrides():
    assert plan_upscale(64, 64, stem=(4, 4)) == (4, 4, (4, 4))
    assert plan_upscale(64, 64, upscale=(2, 2, 2)) == (8, 8, (2, 2, 2))


@pytest.mark.parametrize("height, width, stem, upscale, message", [
    (97, 97, None, None, "97×97 has no upscale plan"),
    (11, 13, None, None, "no upscaling"),
    (64, 64, (3, 3), None, "stem 3×3 does not divide"),
    (64, 64, None, (3, 3), "do not divide"),
    (64, 64, (2, 2), (4, 4), "do not multiply"),
    (98, 98, (2, 2), None, "not a product of the factors 2, 3 and 5"),
])
def test_bad_sizes_raise_one_line(height, width, stem, upscale, message):
    with pytest.raises(ModelError, match=message) as info:
        plan_upscale(height, width, stem, upscale)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# Shapes and values


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80)])
@pytest.mark.parametrize("params", [1, 3, 4])
def test_output_shape_and_range(height, width, params):
    model = build(TINY, height, width, params)
    out = model(torch.rand(2, params) * 2 - 1)
    assert out.shape == (2, 4, height, width)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("height, width", [(400, 400), (1080, 1920)])
def test_large_sizes_build_on_meta(height, width):
    model = build(TINY, height, width, 3, device="meta")
    out = model(torch.zeros(2, 3, device="meta"))
    assert out.shape == (2, 4, height, width)


def test_wrong_input_shape_is_a_model_error():
    with pytest.raises(ModelError, match=r"expected input of shape \(batch, 3\)"):
        build(TINY, 16, 16, 3)(torch.zeros(2, 2))


def test_positional_encoding_values():
    x = torch.tensor([[-1.0, 0.0]])
    features = PositionalEncoding(levels=2, include_input=True)(x)
    # per parameter: x, sin(πu), sin(2πu), cos(πu), cos(2πu) with u = (x + 1) / 2
    expected = torch.tensor([[-1.0, 0, 0, 1, 1, 0.0, 1, 0, 0, -1]])
    assert torch.allclose(features, expected, atol=1e-6)


def test_positional_encoding_tells_the_ends_of_the_range_apart():
    encoding = PositionalEncoding(levels=4, include_input=False)
    ends = encoding(torch.tensor([[-1.0], [1.0]]))
    assert (ends[0] - ends[1]).abs().max() > 1


def test_siren_initialisation_bounds():
    model = build(TINY, 16, 16, 3)
    rb1, rb2 = model.mlp
    first, hidden = rb1.branch[0].linear.weight, rb2.branch[1].linear.weight
    assert first.abs().max() <= 1 / first.shape[1]
    bound = math.sqrt(6 / hidden.shape[1]) / 30
    assert hidden.abs().max() <= bound and hidden.abs().max() > 0.9 * bound
    assert isinstance(rb1.skip, SineLayer) and isinstance(rb2.skip, SineLayer)


def test_channels_decay_and_floor():
    config = ModelConfig(c2=64, channel_decay=2.0, min_channels=8)
    assert config.channels(5) == [64, 32, 16, 8, 8]
    assert ModelConfig(c2=64, channel_decay=1.5).channels(3) == [64, 43, 28]


def test_norm_none_has_no_batchnorm():
    model = build(ModelConfig(c1=8, c2=16, norm="none"), 16, 16, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build(TINY, 16, 16, 3).modules())


def test_nerv_config_has_gelu_mlp_and_rgb_head():
    model = build(preset("nerv", 32, 32), 32, 32, 3, device="meta")
    assert model.head.out_channels == 3
    layers = [m for m in model.mlp.modules() if isinstance(m, (SineLayer, GeluLayer))]
    assert layers and all(isinstance(m, GeluLayer) for m in layers)
    small = build(ModelConfig(arch="nerv", c1=8, c2=16), 32, 32, 3)
    out = small(torch.zeros(1, 3))
    assert out.shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------------------------
# Config round trip


def test_config_round_trip_through_json():
    config = ModelConfig(arch="nerv", c1=16, c2=64, pe_include_input=True, norm="none",
                         min_channels=4).resolved(48, 80)
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert build(again, 48, 80, 2).config == config


def test_model_section_is_a_preset_with_overrides():
    assert model_config(ModelSpec.parse({"preset": "paper"}), 256, 256) == preset("paper", 256, 256)
    config = model_config(ModelSpec.parse({"preset": "nerv", "c1": 8, "upscale": [2, 2]}), 64, 64)
    assert (config.arch, config.c1, config.c2, config.stem, config.upscale) == ("nerv", 8, 1024, (16, 16), (2, 2))
    with pytest.raises(ModelError, match=r"model.widths: unknown key 'widths' \(valid: preset, target_cr, bits, arch"):
        model_config(ModelSpec.parse({"widths": [8]}), 64, 64)
    with pytest.raises(ModelError, match="model.preset: unknown preset 'huge'"):
        model_config(ModelSpec.parse({"preset": "huge"}), 64, 64)
    with pytest.raises(ModelError, match="model.norm: bad value 'layer'"):
        model_config(ModelSpec.parse({"norm": "layer"}), 64, 64)
    with pytest.raises(ModelError, match=r"model.bits: bad value 17 \(expected an integer in 2..16\)"):
        model_config(ModelSpec.parse({"bits": 17}), 64, 64)


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ModelError, match="unknown key 'widths'"):
        ModelConfig.from_dict({"c1": 8, "widths": [1, 2]})
    with pytest.raises(ModelError, match="model.upscale"):
        ModelConfig.from_dict({"upscale": [4, 7]})
    with pytest.raises(ModelError, match="no input"):
        ModelConfig(pe_levels=0)


# ----------------------------------------------------------------------------------------------
# Inference rule


def test_composite_applies_threshold_and_background():
    output = torch.zeros(1, 4, 1, 3)
    output[0, :3] = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1)
    output[0, 3, 0] = torch.tensor([0.51, 0.5, 0.1])
    rgb = composite(output, (255, 0, 51))
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    for column in (1, 2):
        assert torch.allclose(rgb[0, :, 0, column], torch.tensor([1.0, 0.0, 0.2]))
    nerv = torch.rand(1, 3, 2, 2)
    assert composite(nerv, (255, 255, 255)) is nerv


def test_to_uint8_rounds_clamps_and_moves_channels_last():
    rgb = torch.tensor([-0.1, 0.4 / 255, 1.6 / 255, 1.2]).view(1, 1, 4).expand(3, 1, 4)
    pixels = to_uint8(rgb)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 0, 2, 255]


# ----------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("channels_last", [False, True])
def test_tiny_model_learns_on_cpu(channels_last):
    model = build(TINY, 16, 16, 3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3) * 2 - 1
    target = torch.rand(4, 4, 16, 16)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = (model(x) - target).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_forward_under_bf16_autocast():
    model = build(TINY, 16, 16, 3).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3))
    assert out.shape == (2, 4, 16, 16)
    assert torch.isfinite(out.float()).all() and out.min() >= 0 and out.max() <= 1


VIEWS = {"t": [0.0], "theta": [float(v) for v in range(0, 172, 9)], "phi": [float(v) for v in range(0, 352, 9)]}


def test_the_balanced_preset_keeps_channels_toward_full_resolution():
    """balanced is grid with channels falling by 1.5 a block and at least 8 in every block."""
    sized = {name: model_config(ModelSpec.parse({"preset": name, "target_cr": 300}), 128, 128, count=800, grids=VIEWS)
             for name in ("grid", "balanced")}
    grid, balanced = (sized[name].channels(len(sized[name].upscale)) for name in ("grid", "balanced"))
    assert min(grid) == 4 and min(balanced) == 8
    assert balanced[1] > grid[1] and balanced[2] > grid[2]  # channels fall slower (c2 is smaller)
    assert dataclasses.replace(sized["balanced"], channel_decay=2.0, min_channels=4, c1=sized["grid"].c1,
                               c2=sized["grid"].c2) == sized["grid"]


@pytest.mark.parametrize("name", ["paper", "grid", "balanced"])
def test_target_cr_sizes_the_model_for_the_collection(name):
    from nervi_hpc.model.network import count_parameters

    def params(config):
        with torch.device("meta"):
            return count_parameters(NeRVI(config, 256, 256, 3))

    raw = 800 * 256 * 256 * 3
    for target in (100, 300, 1000):
        config = model_config(ModelSpec.parse({"preset": name, "target_cr": target}), 256, 256, count=800, grids=VIEWS)
        cr = raw / (params(config) * 9 / 8)  # the weights alone: the archive adds its tables
        assert target <= cr < 1.6 * target, (target, cr, config.c2)
        assert config.c1 == max(8, round(config.c2 / 4)) and min(config.channels(5)) >= 4
    assert model_config(ModelSpec.parse({}), 256, 256, count=800, grids=VIEWS) == model_config(
        ModelSpec.parse({"preset": "balanced", "target_cr": 300}), 256, 256, count=800, grids=VIEWS)
    fewer_bits = model_config(ModelSpec.parse({"preset": name, "target_cr": 300, "bits": 6}), 256, 256, count=800, grids=VIEWS)
    nine = model_config(ModelSpec.parse({"preset": name, "target_cr": 300}), 256, 256, count=800, grids=VIEWS)
    assert 1.3 < params(fewer_bits) / params(nine) < 1.6  # the same bytes hold more 6-bit weights
    with pytest.raises(ModelError, match="either target_cr or c1/c2"):
        model_config(ModelSpec.parse({"target_cr": 300, "c2": 64}), 256, 256, count=800)
    with pytest.raises(ModelError, match=r"target_cr \d+ or lower fits"):
        model_config(ModelSpec.parse({"preset": "paper", "target_cr": 1e6}), 256, 256, count=800)
    with pytest.raises(ModelError, match="image count is needed"):
        model_config(ModelSpec.parse({"preset": "paper", "target_cr": 300}), 256, 256)


# ----------------------------------------------------------------------------------------------
# Feature grids, periodic inputs, soft compositing (the default preset)

GRIDS = {"t": [0.0, 1.0, 2.0], "theta": [0.0, 90.0, 180.0], "phi": [0.0, 90.0, 180.0, 270.0]}


def test_parameter_grids_fill_in_periods_and_grid_sizes():
    config = model_config(ModelSpec.parse({"preset": "grid", "c1": 8, "c2": 16}), 64, 64, grids=GRIDS)
    # φ sampled every 90° over 0..270: 4 nodes around the circle, period 360° = 2·360/270 units
    assert config.grid_size == (3, 3, 4) and config.periods == (0.0, 0.0, pytest.approx(2 * 360 / 270))
    with pytest.raises(ModelError, match="full period"):
        model_config(ModelSpec.parse({"preset": "grid", "c1": 8, "c2": 16}), 64, 64, grids={**GRIDS, "phi": [0.0, 360.0]})
    with pytest.raises(ModelError, match="no known period"):
        model_config(ModelSpec.parse({"preset": "grid", "c1": 8, "c2": 16, "periodic": ["theta", "phi"]}), 64, 64, grids=GRIDS)
    with pytest.raises(ModelError, match="grid_size"):
        build(model_config(ModelSpec.parse({"preset": "grid", "c1": 8, "c2": 16}), 64, 64), 64, 64, 3)


def test_feature_grid_interpolates_between_nodes_and_wraps_around_periodic_inputs():
    from nervi_hpc.model.layers import FeatureGrid

    grid = FeatureGrid(sizes=(3, 4), periods=(0.0, 2 * 360 / 270), levels=1, features=2)
    table = grid.tables[0].detach().T.reshape(3, 4, 2)
    x = lambda t, phi: torch.tensor([[t / 1.0 - 1, phi / 135 - 1]])  # t ∈ 0..2, φ ∈ 0..270
    with torch.no_grad():
        assert torch.allclose(grid(x(1, 90)), table[1, 1])
        assert torch.allclose(grid(x(0.5, 90)), (table[0, 1] + table[1, 1]) / 2)
        assert torch.allclose(grid(x(2, 315)), (table[2, 3] + table[2, 0]) / 2, atol=1e-6)  # 315° between 270° and 0°
        assert torch.allclose(grid(x(2, 360)), table[2, 0], atol=1e-6)


def test_periodic_positional_encoding_is_the_same_one_period_apart():
    period = 2 * 360 / 270
    encoding = PositionalEncoding(3, False, periods=(0.0, period))
    a, b = torch.tensor([[0.2, -1.0]]), torch.tensor([[0.2, -1.0 + period]])
    assert torch.allclose(encoding(a), encoding(b), atol=1e-5)
    assert not torch.allclose(encoding(torch.tensor([[-1.0, 0.0]])), encoding(torch.tensor([[1.0, 0.0]])))


def test_default_preset_model_tells_every_view_apart_and_builds_on_meta():
    config = model_config(ModelSpec.parse({"c1": 8, "c2": 16}), 32, 32, grids=GRIDS)
    assert config.grid_features > 0 and config.composite == "soft"
    model = build(config, 32, 32, 3).eval()
    x = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1 / 3]])
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 4, 32, 32) and not torch.allclose(out[0], out[1])
    with torch.device("meta"):
        assert count_parameters(NeRVI(config, 32, 32, 3)) == count_parameters(model)


def test_soft_composite_blends_by_a_ramp_of_the_mask():
    output = torch.tensor([[0.2, 0.4, 0.6, 0.1], [0.2, 0.4, 0.6, 0.5], [0.2, 0.4, 0.6, 0.9]]).view(3, 4, 1, 1)
    blended = composite(output, (255, 0, 255), soft=True).flatten(1)
    assert torch.allclose(blended[0], torch.tensor([1.0, 0.0, 1.0]))       # mask ≤ 0.25: background
    assert torch.allclose(blended[1], torch.tensor([0.6, 0.2, 0.8]))       # 0.5: half way
    assert torch.allclose(blended[2], torch.tensor([0.2, 0.4, 0.6]))       # ≥ 0.75: the RGB


def test_bilinear_blocks_upsample_without_pixelshuffle_and_keep_channels_at_full_size():
    grids = {"t": [0.0], "theta": [0.0, 90.0], "phi": [0.0, 90.0, 180.0, 270.0]}
    config = model_config(ModelSpec.parse({"preset": "hinervi", "c1": 16, "c2": 24}), 64, 64, grids=grids)
    assert config.block == "bilinear" and config.stem == (4, 4) and config.upscale == (2, 2, 2, 2)
    model = NeRVI(config, 64, 64, 3)
    assert not any(isinstance(m, torch.nn.PixelShuffle) for m in model.modules())
    last = model.upscale[-1][1]
    assert last.in_channels * last.out_channels * 9 == last.weight.numel()  # k² per pair, not s²·9
    assert min(config.channels(4)) >= 12
    out = model(torch.zeros(2, 3))
    assert out.shape == (2, 4, 64, 64) and ((out >= 0) & (out <= 1)).all()


def test_fine_upscale_plans_keep_one_block_per_octave():
    assert plan_upscale(128, 128, fine=True) == (4, 4, (2, 2, 2, 2, 2))
    assert plan_upscale(1920, 1080, fine=True) == (16, 9, (5, 3, 2, 2, 2))
    assert plan_upscale(128, 128) == (2, 2, (4, 4, 2, 2))


def test_a_bilinear_model_sized_for_a_target_cr_fits_its_budget():
    grids = {"t": [0.0], "theta": [0.0, 90.0], "phi": [0.0, 90.0, 180.0, 270.0]}
    config = model_config(ModelSpec.parse({"preset": "hinervi", "target_cr": 50}), 64, 64, count=200, grids=grids)
    budget = 200 * 64 * 64 * 3 / 50 * 8 / 9
    size = count_parameters(NeRVI(config, 64, 64, 3))
    assert size <= budget and config.c1 == max(8, round(config.c2 / 2))


def test_latent_maps_give_each_view_its_own_start_grid():
    grids = {"t": [0.0], "theta": [0.0, 90.0], "phi": [0.0, 90.0, 180.0, 270.0]}
    config = model_config(ModelSpec.parse({"preset": "hinervi", "c1": 16, "c2": 24, "latent_features": 2}), 64, 64, grids=grids)
    model = NeRVI(config, 64, 64, 3)
    assert model.latents.out_features == config.grid_levels * 2 * 4 * 4
    assert model.upscale[0][1].in_channels == 16 + config.grid_levels * 2
    x = torch.tensor([[0.0, -1.0, -1.0], [0.0, -1.0, -1.0 + 2 / 3]])  # two neighbouring sampled views
    with torch.no_grad():
        before = model(x)
        model.latents.tables[-1][:, 0] += 1.0  # the finest node of the first view only
        after = model(x)
    assert after.shape == (2, 4, 64, 64)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])


@pytest.mark.parametrize("field, value", [("kernel", 10**6), ("kernel", 4), ("latent_features", 10**6)])
def test_the_bilinear_and_latent_fields_are_bounded(field, value):
    with pytest.raises(ModelError, match=f"model.{field}: bad value"):
        ModelConfig(**{field: value})
