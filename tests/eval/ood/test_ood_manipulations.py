"""Manipulations: properties with known answers (Geirhos et al. 2018 formulas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mamba_clip.eval.ood import manipulations as M
from mamba_clip.eval.ood.datasets import load_image
from mamba_clip.eval.ood.protocol import DATASETS, PARAMETRIC_DATASETS


@pytest.fixture(scope="module")
def photo():
    """A real 224x224 RGB stimulus (uint8): the first cue-conflict ``cat`` image, shipped in tests/data."""
    return load_image(Path(__file__).resolve().parents[2] / "data" / "stimuli" / "photo" / "cat1-airplane1.png")


@pytest.fixture(scope="module")
def spectrum(manipulation_dir):
    return np.load(manipulation_dir / "mean_power_spectrum_grey.npy")


def test_greyscale_weights():
    img = np.zeros((2, 2, 3))
    img[0, 0] = (1, 0, 0)
    img[0, 1] = (0, 1, 0)
    img[1, 0] = (0, 0, 1)
    g = M.greyscale(img)[..., 0]
    assert (g[0, 0], g[0, 1], g[1, 0]) == pytest.approx((0.2125, 0.7154, 0.0721))


@pytest.mark.parametrize("c", [1.0, 0.5, 0.1, 0.01])
def test_contrast_keeps_mean_grey(photo, c):
    grey = M.rgb2grey(photo)
    out = M.grayscale_contrast(photo, c)[..., 0]
    # mid-grey 0.5 is the fixed point; deviations from it shrink by exactly c
    np.testing.assert_allclose(out - 0.5, c * (grey - 0.5), atol=1e-12)
    assert out.mean() - 0.5 == pytest.approx(c * (grey.mean() - 0.5), abs=1e-12)
    assert M.adjust_contrast(np.full((4, 4), 0.5), c) == pytest.approx(np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="contrast"):
        M.adjust_contrast(grey, 1.5)


def test_rotation_exact(photo):
    grey = M.rgb2grey(photo)
    x = grey
    for _ in range(4):
        x = M.rotate(x, 90)[..., 0]
    assert np.array_equal(x, grey)
    assert np.array_equal(M.rotate(grey, 90)[..., 0], np.rot90(grey))  # counter-clockwise
    assert np.array_equal(M.rotate(M.rotate(grey, 90)[..., 0], 270)[..., 0], grey)
    assert np.array_equal(M.rotate(grey, 180)[..., 0], grey[::-1, ::-1])
    with pytest.raises(ValueError, match="multiple of 90"):
        M.rotate(grey, 45)


def test_low_pass_sigma_zero_is_identity(photo):
    assert np.array_equal(M.low_pass(photo, 0)[..., 0], M.rgb2grey(photo))
    blurred = M.low_pass(photo, 3)[..., 0]
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(M.rgb2grey(photo), axis=1)).mean()


def test_gaussian_filter_constant_background():
    # a constant image equal to the padding value is left unchanged by any blur
    flat = np.full((30, 20), M.BG_GREY)
    np.testing.assert_allclose(M.gaussian_filter(flat, 5.0), flat, atol=1e-12)
    # the kernel is normalised: an impulse keeps its mass when the background is 0
    imp = np.zeros((41, 41))
    imp[20, 20] = 1.0
    assert M.gaussian_filter(imp, 2.0, cval=0.0).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("std", [3.0, 1.0, 0.45, float("inf")])
def test_high_pass_mean_is_background_grey(photo, std):
    out = M.high_pass(photo, std, clip=False)[..., 0]
    assert out.mean() == pytest.approx(0.4423, abs=1e-12)
    clipped = M.high_pass(photo, std)[..., 0]
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert clipped.mean() == pytest.approx(0.4423, abs=0.02)


def test_power_equalisation_has_stored_spectrum(photo, spectrum):
    out = M.power_equalisation(photo, spectrum, clip=False)[..., 0]
    amp = np.abs(np.fft.fftshift(np.fft.fft2(out)))
    np.testing.assert_allclose(amp, spectrum, rtol=1e-9, atol=1e-9 * spectrum.max())
    # phases are the image's
    ph_in = np.angle(np.fft.fft2(M.rgb2grey(photo)))
    ph_out = np.angle(np.fft.fft2(out))
    assert np.abs(np.angle(np.exp(1j * (ph_in - ph_out))))[1:, 1:].max() < 1e-6
    with pytest.raises(ValueError, match="shape"):
        M.power_equalisation(photo[:100, :100], spectrum)


@pytest.mark.parametrize("method", ["original", "symmetric"])
def test_phase_scrambling(photo, method):
    grey = M.rgb2grey(photo)
    np.testing.assert_allclose(M.phase_scrambling(photo, 0, rng=0, method=method, clip=False)[..., 0], grey,
                               atol=1e-12)  # fmt: skip
    a = M.phase_scrambling(photo, 90, rng=3, method=method)
    assert np.array_equal(a, M.phase_scrambling(photo, 90, rng=3, method=method))
    assert not np.array_equal(a, M.phase_scrambling(photo, 90, rng=4, method=method))
    if method == "symmetric":  # the amplitude spectrum is kept exactly
        out = M.phase_scrambling(photo, 120, rng=1, method=method, clip=False)[..., 0]
        np.testing.assert_allclose(np.abs(np.fft.fft2(out)), np.abs(np.fft.fft2(grey)), rtol=1e-8, atol=1e-8)


def test_uniform_noise_seeded_and_bounded(photo):
    a = M.uniform_noise(photo, 0.35, rng=7)
    assert np.array_equal(a, M.uniform_noise(photo, 0.35, rng=7))
    assert not np.array_equal(a, M.uniform_noise(photo, 0.35, rng=8))
    assert a.min() >= 0 and a.max() <= 1
    base = M.grayscale_contrast(photo, 0.3)[..., 0]
    assert np.array_equal(M.uniform_noise(photo, 0.0, rng=1)[..., 0], base)
    assert np.abs(a[..., 0] - base).max() <= 0.35 + 1e-12


def test_false_colour(photo, manipulation_dir):
    table = np.load(manipulation_dir / "x_gamma_function.npy")
    out = M.false_colour(photo, table)
    assert out.shape == (224, 224, 3) and np.allclose(out * 255, np.rint(out * 255))  # 8-bit grid
    assert np.abs(out - photo / 255).mean() > 0.01  # colours changed
    # inverting the opponent channels twice gives the image back (up to gamut clipping, 8-bit rounding)
    assert np.abs(M.false_colour(out, table) - photo / 255).mean() < 0.005


def test_eidolon_properties(photo):
    small = photo[::4, ::4]  # 56x56 keeps the test fast
    a = M.eidolon(small, 8, 0.3, rng=5)
    assert np.array_equal(a, M.eidolon(small, 8, 0.3, rng=5))
    assert not np.array_equal(a, M.eidolon(small, 8, 0.3, rng=6))
    luma = np.rint((small / 255.0) @ np.array([0.299, 0.587, 0.114]) * 255) / 255
    err = [np.abs(M.eidolon(small, r, 1.0, rng=1)[..., 0] - luma).mean() for r in (0, 8, 128)]
    assert err[0] < err[1] < err[2]  # reach 0 is the (slightly blurred) image; disarray grows with reach
    with pytest.raises(ValueError, match="coherence"):
        M.eidolon(small, 8, 1.5)


def test_manipulate_dispatch_every_condition(photo, manipulation_dir):
    res = M.Resources(manipulation_dir)
    for d in PARAMETRIC_DATASETS:
        spec = DATASETS[d]
        conds = spec.file_conditions if not d.startswith("eidolon") else spec.file_conditions[3:4]
        for c in conds:
            out = M.manipulate(d, c, photo, rng=0, resources=res)
            assert out.shape == (224, 224, 3) and out.min() >= 0 and out.max() <= 1, (d, c)
    assert np.array_equal(M.manipulate("colour", "cr", photo), photo / 255.0)
    with pytest.raises(ValueError, match="not a parametric"):
        M.manipulate("sketch", "0", photo)
    with pytest.raises(ValueError, match="accepted"):
        M.manipulate("contrast", "c07", photo)
