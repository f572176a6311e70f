"""Rate–distortion maths against hand-computed cases, and the plots."""

import math

import numpy as np
import pytest
from PIL import Image

from nervi_hpc.bench.rd import Point, at_cr, bd_rate, ms_ssim_db, plot


def test_quality_at_a_cr_is_linear_in_log_cr_between_the_points_around_it():
    pairs = [(1000.0, 20.0), (100.0, 30.0), (400.0, None)]  # unsorted; a point without PSNR is ignored
    assert at_cr(pairs, math.sqrt(100 * 1000)) == pytest.approx(25.0)  # halfway in log CR
    assert at_cr(pairs, 200.0) == pytest.approx(30 - 10 * math.log(2) / math.log(10))
    assert at_cr(pairs, 100.0) == 30.0 and at_cr(pairs, 1000.0) == 20.0
    assert at_cr(pairs, 99.0) is None and at_cr(pairs, 1001.0) is None  # no extrapolation
    assert at_cr([(300.0, 31.0)], 300.0) == 31.0 and at_cr([(300.0, 31.0)], 299.0) is None
    assert at_cr([], 300.0) is None


def line(intercept, slope, psnrs):
    """Points whose log10(rate) = intercept + slope·PSNR, as (CR, PSNR) with rate = 1/CR."""
    return [(10 ** -(intercept + slope * p), p) for p in psnrs]


def test_bd_rate_of_parallel_lines_is_the_constant_rate_ratio():
    psnrs = [26.0, 29.0, 32.0, 35.0, 38.0]
    a = line(-1.0, -0.05, psnrs)
    b = [(cr / 2, p) for cr, p in a]  # b needs twice the bytes for every PSNR
    assert bd_rate(a, b) == pytest.approx(-50.0)
    assert bd_rate(b, a) == pytest.approx(100.0)
    assert bd_rate(a, a) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_crossing_lines_averages_over_the_overlapping_psnr_range():
    a = line(-0.5, -0.08, [30.0, 32.5, 35.0, 37.5, 40.0])
    b = line(-1.5, -0.04, [25.0, 27.5, 30.0, 32.5, 35.0])
    mean_log_difference = (-0.5 - -1.5) + (-0.08 - -0.04) * (30 + 35) / 2  # mean over PSNR 30..35
    assert bd_rate(a, b) == pytest.approx((10 ** mean_log_difference - 1) * 100)


def test_bd_rate_fits_a_cubic_through_four_points():
    """log10(rate) = cubic(PSNR) for a; b is a shifted by log10(3): exactly −2/3 fewer bytes."""
    psnrs = np.array([28.0, 31.0, 34.0, 37.0])
    log_rate = -1 - 0.02 * (psnrs - 30) - 0.004 * (psnrs - 30) ** 2 + 0.0003 * (psnrs - 30) ** 3
    a = list(zip(10 ** -log_rate, psnrs))
    b = list(zip(10 ** -(log_rate + math.log10(3)), psnrs))
    assert bd_rate(a, b) == pytest.approx((1 / 3 - 1) * 100)


def test_bd_rate_is_none_without_overlap_or_points():
    a = line(-1.0, -0.05, [30.0, 33.0])
    assert bd_rate(a, line(-1.0, -0.05, [34.0, 38.0])) is None
    assert bd_rate(a, [(300.0, 31.0)]) is None
    assert bd_rate(a, []) is None


def test_ms_ssim_in_db():
    assert ms_ssim_db(0.99) == pytest.approx(20.0) and ms_ssim_db(1.0) is None and ms_ssim_db(None) is None


def test_plots_are_pngs_with_a_panel_per_metric(tmp_path):
    points = [Point("nervi", f"cr{cr}", "nervi", cr, 30 - cr / 100, 25 - cr / 100, 0.99, 60.0, 1.0)
              for cr in (100, 300, 700)]
    points += [Point("h264", f"crf-{q}", "codec", cr, psnr, psnr - 6, None if q == 0 else 0.98, 1.0, 0.1)
               for q, cr, psnr in ((0, 50, 45.0), (20, 200, 33.0), (40, 900, 26.0))]
    plot(points, tmp_path / "psnr.png", "psnr", "test")
    plot(points, tmp_path / "msssim.png", "ms_ssim", "test")
    wide, narrow = Image.open(tmp_path / "psnr.png"), Image.open(tmp_path / "msssim.png")
    assert wide.format == narrow.format == "PNG"
    assert wide.width > 1.5 * narrow.width and wide.height == narrow.height  # two panels vs one
