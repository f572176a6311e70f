"""The torch ray caster (nervi_hpc.data.sources.raycast) and the synthetic scenes that use it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from nervi_hpc.config import SyntheticSource
from nervi_hpc.data.sources.raycast import Surface, TransferFunction, render_isosurface, render_volume
from nervi_hpc.data.sources.synthetic import SCENES, SyntheticScene, blobs_volume, tornado_volume
from nervi_hpc.errors import ConfigError, SourceError
from nervi_hpc.schema import Grid

SIZE = (32, 32)
RES = 40


@pytest.fixture(scope="module")
def tornado():
    return tornado_volume(RES, 0.0)


@pytest.fixture(scope="module")
def blobs():
    return blobs_volume(RES, 0.0, seed=0)


def ir(volume, theta, phi, size=SIZE, scene="tornado", **kw):
    return render_isosurface(volume, theta, phi, size, Surface(SCENES[scene].isovalue), **kw)


def dvr(volume, theta, phi, size=SIZE, scene="tornado", **kw):
    return render_volume(volume, theta, phi, size, SCENES[scene].transfer, **kw)


def scene(**kw) -> SyntheticScene:
    spec = dict(kind="synthetic", scene="tornado", mode="ir", size=(24, 24), t=Grid((0.0, 2.0)),
                theta=Grid((30.0, 90.0)), phi=Grid((0.0, 45.0, 180.0)), volume=32)
    spec.update(kw)
    return SyntheticScene.from_spec(SyntheticSource(**spec))


# ----------------------------------------------------------------------------------------------
# The renderer


@pytest.mark.parametrize("name", ["tornado", "blobs"])
def test_isosurface_covers_a_sane_part_of_the_frame_and_is_opaque(name, tornado, blobs):
    volume = {"tornado": tornado, "blobs": blobs}[name]
    rgb, alpha = ir(volume, [60.0], [30.0], scene=name)
    assert rgb.shape == (1, *SIZE, 3) and alpha.shape == (1, *SIZE)
    assert 0.02 < alpha.mean() < 0.5
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    surface = rgb[alpha == 1]
    assert surface.std() > 0.02  # shaded, not flat
    assert (rgb[alpha == 0] == 0).all()


@pytest.mark.parametrize("render", [ir, dvr])
def test_whole_cube_stays_inside_the_frame_from_any_view(render, tornado):
    theta = [0.0, 45.0, 90.0, 135.0, 180.0, 54.7]
    phi = [0.0, 45.0, 100.0, 225.0, 300.0, 45.0]
    full = torch.ones(RES, RES, RES)  # a solid cube: every ray through it is foreground
    for volume in (tornado, full):
        _, alpha = render(volume, theta, phi, size=(30, 44))
        assert alpha.shape == (6, 30, 44)
        border = torch.cat([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], dim=1)
        assert (border == 0).all()
        assert (alpha.flatten(1).amax(1) > 0).all()


def test_poles_render_non_empty_and_finite(tornado):
    for render in (ir, dvr):
        rgb, alpha = render(tornado, [0.0, 180.0], [0.0, 0.0])
        assert torch.isfinite(rgb).all() and torch.isfinite(alpha).all()
        assert (alpha.flatten(1).amax(1) > 0.3).all()
        assert not torch.equal(alpha[0], alpha[1])  # top and bottom of the funnel differ


def test_pole_frame_turns_with_phi_and_stays_continuous(tornado):
    _, at_pole = ir(tornado, [0.0, 0.0], [0.0, 90.0])
    assert not torch.equal(at_pole[0], at_pole[1])
    _, near = ir(tornado, [0.0, 0.5], [40.0, 40.0])
    assert (near[0] != near[1]).float().mean() < 0.05


def test_volume_rendering_is_semi_transparent_and_differs_from_isosurface(tornado):
    rgb_s, alpha_s = ir(tornado, [70.0], [20.0])
    rgb_v, alpha_v = dvr(tornado, [70.0], [20.0])
    assert ((alpha_v > 0.05) & (alpha_v < 0.95)).float().mean() > 0.02
    assert (alpha_v >= 0).all() and (alpha_v <= 1).all() and (rgb_v >= 0).all() and (rgb_v <= 1).all()
    assert (rgb_v - rgb_s).abs().mean() > 0.05


@pytest.mark.parametrize("render", [ir, dvr])
def test_images_change_with_theta_and_phi(render, tornado):
    rgb, alpha = render(tornado, [60.0, 100.0, 60.0], [0.0, 0.0, 90.0])
    for other in (1, 2):
        assert (rgb[0] - rgb[other]).abs().mean() > 0.01


def test_batch_and_chunks_equal_one_view_at_a_time(tornado):
    theta, phi = [0.0, 45.0, 120.0, 180.0], [10.0, 200.0, 330.0, 0.0]
    for render in (ir, dvr):
        rgb, alpha = render(tornado, theta, phi)
        rgb_c, alpha_c = render(tornado, theta, phi, max_rays=333)
        for k in range(len(theta)):
            rgb_1, alpha_1 = render(tornado, theta[k:k + 1], phi[k:k + 1])
            torch.testing.assert_close(rgb[k], rgb_1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(alpha[k], alpha_1[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb, rgb_c, atol=1e-5, rtol=0)
        torch.testing.assert_close(alpha, alpha_c, atol=1e-5, rtol=0)


def test_nothing_above_the_isovalue_renders_empty(tornado):
    rgb, alpha = render_isosurface(tornado * 0.5, [60.0], [0.0], SIZE, Surface(0.9))
    assert (alpha == 0).all() and (rgb == 0).all()


def test_transfer_function_table_interpolates_control_points():
    tf = TransferFunction(colors=((0.0, (0.0, 0.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
                          opacities=((0.0, 0.0), (0.5, 0.0), (1.0, 0.8)))
    table = tf.table(entries=11)
    np.testing.assert_allclose(table[5], [0.5, 0.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(table[10], [1.0, 0.0, 0.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(table[8, 3], 0.48, atol=1e-6)
    assert 0.49 < tf.lowest_visible() <= 0.5


# ----------------------------------------------------------------------------------------------
# The synthetic source


def test_params_are_the_t_major_product_of_the_grids():
    src = scene()
    assert src.names == ("t", "theta", "phi") and len(src) == 2 * 2 * 3
    assert src.params.dtype == np.float64
    expected = [(t, th, ph) for t in (0.0, 2.0) for th in (30.0, 90.0) for ph in (0.0, 45.0, 180.0)]
    np.testing.assert_array_equal(src.params, np.array(expected))
    assert src.background == (255, 255, 255) and src.mask_tolerance == 0 and src.mode == "ir"
    assert src.size == (24, 24)
    assert "tornado" in src.description and "12 images" in src.description
    assert "\n" not in src.description


def test_default_and_explicit_isovalue():
    assert scene().isovalue == SCENES["tornado"].isovalue
    assert scene(isovalue=0.4).isovalue == 0.4
    assert scene(scene="blobs").isovalue == SCENES["blobs"].isovalue
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="source.isovalue: bad value"):
            scene(isovalue=bad)


@pytest.mark.parametrize("mode", ["ir", "dvr"])
def test_read_composites_to_background_where_alpha_is_zero(mode):
    src = scene(mode=mode)
    rgb, alpha = src.read([1, 7])
    assert rgb.shape == (2, 24, 24, 3) and rgb.dtype == np.uint8
    assert alpha.shape == (2, 24, 24) and alpha.dtype == np.uint8
    a = alpha[..., None] / 255.0
    composite = np.round(rgb * a + np.array(src.background) * (1 - a)).astype(np.uint8)
    assert (composite[alpha == 0] == 255).all()
    assert (composite[alpha == 255] != 255).any(axis=-1).all()  # opaque surface is not white
    assert 0 < (alpha > 0).mean() < 0.7
    if mode == "ir":
        assert set(np.unique(alpha)) == {0, 255}


def test_read_follows_the_order_asked_and_time_changes_the_image():
    src = scene()
    order = [9, 0, 4, 6, 0]  # mixed time steps, a repeat
    rgb, alpha = src.read(order)
    for k, index in enumerate(order):
        rgb_1, alpha_1 = src.read([index])
        np.testing.assert_array_equal(rgb[k], rgb_1[0])
        np.testing.assert_array_equal(alpha[k], alpha_1[0])
    # indices 0 and 6 share theta and phi, at t = 0 and t = 2
    assert np.abs(rgb[1].astype(int) - rgb[3]).mean() > 1.0


def test_blobs_move_with_t_and_the_seed():
    base = blobs_volume(24, 0.0, seed=0)
    assert (base - blobs_volume(24, 3.0, seed=0)).abs().max() > 0.2
    assert (base - blobs_volume(24, 0.0, seed=1)).abs().max() > 0.2
    torch.testing.assert_close(base, blobs_volume(24, 0.0, seed=0))


def test_read_rejects_an_index_out_of_range():
    src = scene()
    with pytest.raises(SourceError, match="out of range"):
        src.read([0, 12])


def test_pickle_round_trip_is_small_and_reads_the_same():
    src = scene(mode="dvr")
    before = src.read([3, 8])
    data = pickle.dumps(src)
    assert len(data) < 4096 + src.params.nbytes  # the cached volume is not pickled
    copy = pickle.loads(data)
    assert copy.names == src.names and copy.description == src.description
    np.testing.assert_array_equal(copy.params, src.params)
    after = copy.read([3, 8])
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
