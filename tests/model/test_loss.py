"""NeRVI / NeRV losses and PSNR on tiny hand-checked cases."""

import math
import warnings

import pytest
import torch
from pytorch_msssim import ssim as reference_ssim

from nervi_hpc.model.loss import loss_for, nerv_loss, nervi_loss, psnr, ssim


def random_case(seed=0, size=16):
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(2, 3, size, size, generator=generator)
    mask = (torch.rand(2, 1, size, size, generator=generator) > 0.5).float()
    return rgb, mask


def test_perfect_prediction_costs_nothing():
    rgb, mask = random_case()
    assert nervi_loss(torch.cat([rgb, mask], 1), rgb, mask).item() == pytest.approx(0, abs=1e-5)
    assert nerv_loss(rgb.clone(), rgb).item() == pytest.approx(0, abs=1e-5)


def test_masked_l1_by_hand():
    rgb = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0, :2] = 1
    predicted_rgb = rgb.clone()
    predicted_rgb[0, :, 0, 0] = torch.tensor([0.6, 0.5, 0.3])   # masked: |Δ| sums to 0.3
    predicted_rgb[0, :, 5, 5] = 1.0                            # unmasked: ignored by the L1 term
    predicted_mask = mask.clone()
    predicted_mask[0, 0, 0, 1] = 0.25                          # |Δ| 0.75
    predicted_mask[0, 0, 7, 7] = 0.5                           # |Δ| 0.5
    loss = nervi_loss(torch.cat([predicted_rgb, predicted_mask], 1), rgb, mask)
    similarity = reference_ssim(predicted_rgb, rgb, data_range=1.0, win_size=7).item()
    assert similarity < 1
    mask_l1, rgb_l1 = 1.25 / 64, 0.3 / 2
    assert loss.item() == pytest.approx(0.7 * (mask_l1 + rgb_l1) + 0.3 * (1 - similarity), rel=1e-5)
    scaled = nervi_loss(torch.cat([predicted_rgb, predicted_mask], 1), rgb, mask, mask_weight=0.1)
    assert scaled.item() == pytest.approx(0.7 * (0.1 * mask_l1 + rgb_l1) + 0.3 * (1 - similarity), rel=1e-5)


def test_empty_mask_gives_finite_loss_and_gradients():
    rgb = torch.rand(1, 3, 8, 8)
    output = torch.rand(1, 4, 8, 8, requires_grad=True)
    loss = nervi_loss(output, rgb, torch.zeros(1, 1, 8, 8))
    similarity = reference_ssim(output[:, :3].detach(), rgb, data_range=1.0, win_size=7).item()
    mask_l1 = output[:, 3].detach().mean().item()  # the RGB term is 0 with nothing masked
    assert loss.item() == pytest.approx(0.7 * mask_l1 + 0.3 * (1 - similarity), rel=1e-5)
    loss.backward()
    assert torch.isfinite(output.grad).all() and output.grad[:, 3].abs().sum() > 0


def test_nerv_loss_by_hand():
    rgb = torch.full((1, 3, 8, 8), 0.25)
    output = rgb.clone()
    output[0, 1, 2, 3] = 0.75
    similarity = reference_ssim(output, rgb, data_range=1.0, win_size=7).item()
    assert nerv_loss(output, rgb).item() == pytest.approx(0.7 * 0.5 / (3 * 64) + 0.3 * (1 - similarity), rel=1e-5)


def test_loss_for_arch():
    rgb, mask = random_case()
    output = torch.cat([rgb * 0.5, mask * 0.8], 1)
    assert loss_for("nervi")(output, rgb, mask) == nervi_loss(output, rgb, mask)
    assert loss_for("nervi", "bce")(output, rgb, mask) == nervi_loss(output, rgb, mask, mask_loss="bce")
    assert loss_for("nerv") is nerv_loss
    assert nerv_loss(rgb * 0.5, rgb, mask) == nerv_loss(rgb * 0.5, rgb)


@pytest.mark.parametrize("size, window", [(8, 7), (10, 9), (12, 11), (64, 11)])
def test_ssim_window_shrinks_for_small_images(size, window):
    x, y = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch_msssim warns when it skips smoothing
        value = ssim(x, y)
    assert value.item() == pytest.approx(reference_ssim(x, y, data_range=1.0, win_size=window).item())


def test_loss_accepts_bf16_output():
    rgb, mask = random_case()
    output = torch.cat([rgb, mask], 1).to(torch.bfloat16)
    loss = nervi_loss(output, rgb, mask)
    assert loss.dtype == torch.float32 and loss.item() < 0.02


def test_psnr_known_values():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1          # mse 0.01   → 20 dB
    b[1] += 0.01         # mse 0.0001 → 40 dB
    values = psnr(b, a, per_image=True)
    assert values.shape == (2,)
    assert values.tolist() == pytest.approx([20.0, 40.0])
    assert psnr(b, a).item() == pytest.approx(30.0)
    assert psnr(a[0], a[0]).item() == math.inf


def test_bce_mask_term_keeps_a_gradient_where_l1_through_a_saturated_sigmoid_has_none():
    logits = torch.full((1, 1, 4, 4), -12.0, requires_grad=True)  # mask saturated at "background"
    rgb = torch.zeros(1, 3, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    grads = {}
    for kind in ("l1", "bce"):
        output = torch.cat([rgb, torch.sigmoid(logits)], 1)
        (g,) = torch.autograd.grad(nervi_loss(output, rgb, mask, mask_loss=kind), logits)
        grads[kind] = g.abs().max().item()
    assert grads["l1"] < 1e-5 < 1e-2 < grads["bce"]
