"""The 12 parametric image manipulations of model-vs-human, as seeded numpy functions.

Formulas and parameters follow Geirhos et al., "Generalisation in humans and deep neural networks"
(NeurIPS 2018; rgeirhos/generalisation-humans-DNNs, ``code/image_manipulation.py``) and, for the
eidolons, the partially coherent disarray of the Eidolon Factory (Koenderink et al., JoV 2017;
gestaltrevision/Eidolon), used by Geirhos et al. with grain 10 and coherence 1.0 / 0.3 / 0.0.

Conventions: images are float64 arrays in [0, 1], ``(H, W, 3)`` RGB or ``(H, W)`` grey (uint8 input
is divided by 255). All manipulations except colour and false-colour work on the greyscale image
(luminance weights 0.2125, 0.7154, 0.0721) and return it stacked to ``(H, W, 3)``. Random
manipulations take ``rng``: an ``np.random.Generator``, an int seed, or None (fresh entropy).
Functions with a ``clip`` flag return the unclipped result with ``clip=False`` (for checks).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .protocol import PARAMETRIC_DATASETS, get_spec

GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
BG_GREY = 0.4423  # mean pixel value over the stimuli; background of the filters
NOISE_CONTRAST = 0.3  # uniform-noise images are greyscale at 30% contrast before the noise

Rng = Union[np.random.Generator, int, None]


def as_generator(rng: Rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def to_float(image) -> np.ndarray:
    """uint8 -> [0, 1] float64; float arrays are checked to lie in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    arr = arr.astype(np.float64)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.size and (arr.min() < -1e-9 or arr.max() > 1 + 1e-9):
        raise ValueError(f"float image values must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return arr


def rgb2grey(image) -> np.ndarray:
    """(H, W, 3) -> (H, W) luminance with weights 0.2125 R + 0.7154 G + 0.0721 B; grey passes through."""
    img = to_float(image)
    return img if img.ndim == 2 else img @ GREY_WEIGHTS


def grey_to_rgb(channel: np.ndarray) -> np.ndarray:
    return np.repeat(channel[:, :, None], 3, axis=2)


def greyscale(image) -> np.ndarray:
    """Colour experiment, condition ``bw``."""
    return grey_to_rgb(rgb2grey(image))


def adjust_contrast(image, contrast: float) -> np.ndarray:
    """``(1 - c) / 2 + c * image``: scales deviations from mid-grey 0.5 by ``c`` in [0, 1]."""
    if not 0.0 <= contrast <= 1.0:
        raise ValueError(f"contrast must lie in [0, 1], got {contrast}")
    return (1.0 - contrast) / 2.0 + to_float(image) * contrast


def grayscale_contrast(image, contrast: float) -> np.ndarray:
    """Contrast experiment: greyscale, then :func:`adjust_contrast`."""
    return grey_to_rgb(adjust_contrast(rgb2grey(image), contrast))


def uniform_noise(image, width: float, rng: Rng = None, contrast: float = NOISE_CONTRAST) -> np.ndarray:
    """Noise experiment: greyscale at 30% contrast plus i.i.d. uniform noise in [-width, width), clipped."""
    if width < 0:
        raise ValueError(f"noise width must be >= 0, got {width}")
    grey = adjust_contrast(rgb2grey(image), contrast)
    noise = as_generator(rng).uniform(-width, width, size=grey.shape)
    return grey_to_rgb(np.clip(grey + noise, 0.0, 1.0))


def _gauss_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n + 2r) matrix applying a normalised 1-D Gaussian to a signal padded by r on both sides."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n + 2 * r))
    for i in range(n):
        m[i, i : i + 2 * r + 1] = k[::-1]
    return m, r


def gaussian_filter(channel: np.ndarray, sigma: float, cval: float = BG_GREY) -> np.ndarray:
    """2-D Gaussian blur with constant padding ``cval`` (scipy ``gaussian_filter(mode="constant")``
    semantics, kernel truncated at 4 sigma). ``sigma == 0`` returns the input unchanged."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    channel = np.asarray(channel, dtype=np.float64)
    if sigma == 0:
        return channel.copy()
    h, w = channel.shape
    mh, rh = _gauss_matrix(h, sigma)
    mw, rw = _gauss_matrix(w, sigma)
    padded = np.pad(channel, ((rh, rh), (rw, rw)), mode="constant", constant_values=cval)
    return mh @ padded @ mw.T


def low_pass(image, std: float, bg: float = BG_GREY) -> np.ndarray:
    """Low-pass experiment: Gaussian blur (std in pixels, background ``bg`` beyond the border) of
    the greyscale image, clipped to [0, 1]. ``std == 0`` is the greyscale image."""
    out = gaussian_filter(rgb2grey(image), std, cval=bg)
    return grey_to_rgb(np.clip(out, 0.0, 1.0))


def high_pass(image, std: float, bg: float = BG_GREY, clip: bool = True) -> np.ndarray:
    """High-pass experiment: ``grey - lowpass(grey)``, shifted to mean ``bg`` (0.4423), clipped.

    ``std == inf`` (the control condition) is the limit of an infinitely wide low-pass, i.e. the
    greyscale image shifted to mean ``bg``.
    """
    grey = rgb2grey(image)
    if std <= 0:
        raise ValueError(f"high-pass std must be > 0 (or inf), got {std}")
    hp = grey - bg if math.isinf(std) else grey - gaussian_filter(grey, std, cval=bg)
    hp = hp + (bg - hp.mean())
    return grey_to_rgb(np.clip(hp, 0.0, 1.0) if clip else hp)


def _conjugate_index(shape):
    h, w = shape
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (-i) % h, (-j) % w


def phase_scrambling(
    image, width: float, rng: Rng = None, method: str = "original", clip: bool = True
) -> np.ndarray:
    """Phase-noise experiment: add uniform noise in [-width, width] degrees to the Fourier phases of
    the greyscale image, keep the amplitudes, clip to [0, 1].

    ``method="original"`` pairs the shifts over the (H-1) x (W-1) centred spectrum exactly as the
    published stimulus script does (``+shift`` on the first half of the flattened block, ``-shift``
    in the same order on the second half) and keeps the real part; that is how the human stimuli were
    made. ``method="symmetric"`` gives each conjugate frequency pair opposite shifts, so the phase
    noise is exactly uniform and the amplitude spectrum exactly kept. ``width == 0`` is the identity
    (before clipping) for both.
    """
    if width < 0:
        raise ValueError(f"phase noise width must be >= 0, got {width}")
    if method not in ("original", "symmetric"):
        raise ValueError(f"method must be 'original' or 'symmetric', got {method!r}")
    gen = as_generator(rng)
    grey = rgb2grey(image)
    h, w = grey.shape
    f = np.fft.fftshift(np.fft.fft2(grey))
    amp, phase = np.abs(f), np.angle(f)
    if method == "original":
        block = phase[1:, 1:].reshape(-1).copy()
        n = block.size
        shifts = (gen.random(n // 2) - 0.5) * 2.0 * width / 180.0 * np.pi
        block[: n // 2] += shifts
        block[n // 2 + 1 :] -= shifts[: n - n // 2 - 1]
        phase = phase.copy()
        phase[1:, 1:] = block.reshape(h - 1, w - 1)
        fnew = np.fft.ifftshift(amp * np.exp(1j * phase))
    else:
        f0 = np.fft.fft2(grey)
        noise = (gen.random((h, w)) - 0.5) * 2.0 * width / 180.0 * np.pi
        ci, cj = _conjugate_index((h, w))
        flat = np.arange(h * w).reshape(h, w)
        partner = ci * w + cj
        shift = np.where(flat < partner, noise, np.where(flat > partner, -noise[ci, cj], 0.0))
        fnew = np.abs(f0) * np.exp(1j * (np.angle(f0) + shift))
    out = np.fft.ifft2(fnew).real
    return grey_to_rgb(np.clip(out, 0.0, 1.0) if clip else out)


def power_equalisation(image, mean_spectrum: np.ndarray, clip: bool = True) -> np.ndarray:
    """Power-equalisation experiment: the greyscale image's Fourier amplitudes are replaced by the
    mean amplitude spectrum (``mean_power_spectrum_grey.npy``, centred/fftshifted layout), phases
    kept; real part, clipped to [0, 1]."""
    grey = rgb2grey(image)
    spectrum = np.asarray(mean_spectrum, dtype=np.float64)
    if spectrum.shape != grey.shape:
        raise ValueError(f"mean_spectrum shape {spectrum.shape} must equal the image shape {grey.shape}")
    phase = np.angle(np.fft.fftshift(np.fft.fft2(grey)))
    out = np.fft.ifft2(np.fft.ifftshift(spectrum * np.exp(1j * phase))).real
    return grey_to_rgb(np.clip(out, 0.0, 1.0) if clip else out)


# Cone fundamentals of the monitor primaries (rows L, M, S) and the DKL opponent transform
# (Brainard 1996) used by the false-colour stimuli.
_CONES = np.array([[0.1619982647, 0.208049264, 0.0389347448],
                   [0.0330275785, 0.2496504557, 0.0618343518],
                   [0.0015524055, 0.0198861001, 0.1890224274]])  # fmt: skip
_CONES_WHITE = np.array([0.20449114, 0.17225619, 0.10523047])
_DKL = np.array([[9.27590805, 9.27590805, 0.0],
                 [7.86421647, -9.33587662, 0.0],
                 [-3.39709047, -3.39709047, 12.16230246]])  # fmt: skip


def _nearest_index(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the increasing ``table`` (lowest index on ties)."""
    hi = np.clip(np.searchsorted(table, values), 1, len(table) - 1)
    lo = hi - 1
    return np.where(values - table[lo] <= table[hi] - values, lo, hi)


def false_colour(image, gamma_table: np.ndarray) -> np.ndarray:
    """False-colour experiment: through the monitor gamma (``x_gamma_function.npy``, 256 entries)
    to linear intensities, to cone contrasts around the white point, invert the L-M and S-(L+M)
    opponent channels (DKL space), back to RGB, clip, and back through the inverse gamma (nearest
    table entry). The image is first put on the 8-bit grid (it normally comes from an 8-bit file)."""
    img = to_float(image)
    if img.ndim != 3:
        raise ValueError("false_colour needs an RGB image (H, W, 3)")
    table = np.asarray(gamma_table, dtype=np.float64).reshape(-1)
    if table.size != 256 or np.any(np.diff(table) < 0):
        raise ValueError("gamma_table must hold 256 non-decreasing values")
    lin = table[np.rint(img * 255).astype(np.int64)]
    dkl = (lin @ _CONES.T - _CONES_WHITE) @ _DKL.T
    dkl[..., 1:] *= -1.0
    cones = dkl @ np.linalg.inv(_DKL).T + _CONES_WHITE
    rgb = np.clip(cones @ np.linalg.inv(_CONES).T, 0.0, 1.0)
    return _nearest_index(rgb, table) / 255.0


def rotate(image, angle: int) -> np.ndarray:
    """Rotation experiment: greyscale image rotated counter-clockwise by 0, 90, 180 or 270 degrees
    (exact pixel permutation)."""
    if angle % 90 != 0:
        raise ValueError(f"angle must be a multiple of 90, got {angle}")
    return grey_to_rgb(np.rot90(rgb2grey(image), k=(angle // 90) % 4))


# --- Eidolons: partially coherent disarray ---------------------------------------------------------

EIDOLON_MIN_SIGMA = 1.0 / math.sqrt(2.0)
EIDOLON_MAX_SIGMA = 64.0  # SZ / 4 with the Eidolon Factory's working size SZ = 256
EIDOLON_SIGMA_FACTOR = math.sqrt(2.0)


def eidolon_scale_levels(max_sigma: float = EIDOLON_MAX_SIGMA) -> np.ndarray:
    """Scale levels ``MIN_SIGMA * sqrt(2)^k``, ``k < ceil(2 log2 MAX_SIGMA)`` (12 levels for 64)."""
    n = int(math.ceil(2 * math.log(max_sigma) / math.log(2)))
    return EIDOLON_MIN_SIGMA * EIDOLON_SIGMA_FACTOR ** np.arange(n)


def _pow2_ceil(x: float) -> int:
    return 1 if x < 1 else int(2 ** math.ceil(math.log2(x)))


def _embed(grey: np.ndarray):
    """Mirror-pad into a power-of-two canvas of about 1.5x the size (Eidolon ``EmbedImage``)."""
    h, w = grey.shape
    hh, ww = _pow2_ceil(1.5 * h), _pow2_ceil(1.5 * w)
    dh, dw = (hh - h) // 2, (ww - w) // 2
    if dh > h or dw > w:
        raise ValueError(f"image {grey.shape} too small to embed")
    fat = np.zeros((hh, ww))
    fat[dh : dh + h, :dw] = grey[:, :dw][:, ::-1]
    fat[dh : dh + h, dw : dw + w] = grey
    fat[dh : dh + h, ww - dw :] = grey[:, w - dw :][:, ::-1]
    fat[:dh] = fat[dh : 2 * dh][::-1]
    fat[hh - dh :] = fat[hh - 2 * dh : hh - dh][::-1]
    return fat, (dh, dw)


def _circular_gauss_fft(shape, sigma: float) -> np.ndarray:
    """rfft2 of a sampled, wrapped 2-D Gaussian kernel (periodic convolution)."""
    h, w = shape

    def axis(n):
        v = np.arange(n)
        v = np.where(v > n // 2, v - n, v)
        return np.exp(-(v**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)

    return np.fft.rfft2(np.outer(axis(h), axis(w)))


def _blur(plane: np.ndarray, sigma: float, cache: Dict[float, np.ndarray]) -> np.ndarray:
    if sigma not in cache:
        cache[sigma] = _circular_gauss_fft(plane.shape, sigma)
    return np.fft.irfft2(np.fft.rfft2(plane) * cache[sigma], s=plane.shape)


def _blurred_noise(shape, sigma, gen, cache) -> np.ndarray:
    """Gaussian white noise (scaled to +-127), blurred with ``sigma``, normalised to zero mean and
    unit variance."""
    n = gen.standard_normal(shape)
    n = np.clip(127.5 * n / np.abs(n).max(), -127, 127)
    c = _blur(n, sigma, cache)
    return (c - c.mean()) / c.std()


def eidolon(image, reach: float, coherence: float, grain: float = 10.0, rng: Rng = None) -> np.ndarray:
    """Eidolon experiments: partially coherent disarray of the greyscale image.

    The (8-bit, ITU-R 601 luma as in the Eidolon Factory) grey image is mirror-embedded, split into
    difference-of-Gaussian scale-space slices (12 levels, sigma 0.71 ... 32, the last slice the
    coarsest blur), and every slice is resampled at ``position + reach * displacement`` (truncated
    to the nearest lower pixel, clamped to the canvas). Displacements at level ``k``:
    ``coherence * incoherent_k + coherent_k`` with ``incoherent_k`` unit-variance noise blurred by
    ``grain`` (fresh per level) and ``coherent_k = sum_{j >= k} noise(sigma_j) * sigma_j / 64`` (coarse
    levels drag finer ones along). The slices are summed, cropped, clipped to 0..255 and quantised.
    """
    if reach < 0:
        raise ValueError(f"reach must be >= 0, got {reach}")
    if not 0.0 <= coherence <= 1.0:
        raise ValueError(f"coherence must lie in [0, 1], got {coherence}")
    if grain <= 0:
        raise ValueError(f"grain must be > 0, got {grain}")
    gen = as_generator(rng)
    img = to_float(image)
    grey = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])
    grey = np.rint(grey * 255.0)
    h, w = grey.shape
    fat, (dh, dw) = _embed(grey)
    levels = eidolon_scale_levels()
    cache: Dict[float, np.ndarray] = {}
    blurred = [_blur(fat, s, cache) for s in levels]
    dog = [blurred[k] - blurred[k + 1] for k in range(len(levels) - 1)] + [blurred[-1]]

    def displacement_stack():
        scaled = [_blurred_noise(fat.shape, s, gen, cache) * (s / EIDOLON_MAX_SIGMA) for s in levels]
        coherent = np.cumsum(scaled[::-1], axis=0)[::-1]  # coherent[k] = sum_{j >= k} scaled[j]
        return [coherence * _blurred_noise(fat.shape, grain, gen, cache) + coherent[k]
                for k in range(len(levels))]  # fmt: skip

    dx, dy = displacement_stack(), displacement_stack()
    hh, ww = fat.shape
    rows, cols = np.indices(fat.shape)
    out = np.zeros(fat.shape)
    for plane, x, y in zip(dog, dx, dy):
        r = np.clip(x * reach + rows, 0, hh - 1).astype(np.int64)
        c = np.clip(y * reach + cols, 0, ww - 1).astype(np.int64)
        out += plane[r, c]
    crop = np.clip(out[dh : dh + h, dw : dw + w], 0, 255).astype(np.uint8)
    return grey_to_rgb(crop / 255.0)


# --- dispatch by dataset / condition ---------------------------------------------------------------


PACKAGE_DATA = Path(__file__).resolve().parent / "data"  # shipped with the package (see data/README.md)
# which manipulation needs which data file
NEEDS = {"power-equalisation": "mean_power_spectrum_grey.npy", "false-colour": "x_gamma_function.npy"}


def default_manipulation_dir() -> Path:
    """``$MAMBA_CLIP_MANIPULATION_DATA``, else the copy shipped as package data."""
    env = os.environ.get("MAMBA_CLIP_MANIPULATION_DATA")
    return Path(env) if env else PACKAGE_DATA


class Resources:
    """Lazy loader for ``mean_power_spectrum_grey.npy`` and ``x_gamma_function.npy``."""

    def __init__(self, directory: Optional[Union[str, os.PathLike]] = None):
        self.directory = Path(directory) if directory is not None else default_manipulation_dir()
        self._cache: Dict[str, np.ndarray] = {}

    def _load(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if self.directory is None or not (self.directory / name).is_file():
                raise FileNotFoundError(
                    f"{name} not found (looked in {self.directory}); pass the folder holding "
                    "mean_power_spectrum_grey.npy and x_gamma_function.npy (--manipulation-data or "
                    "$MAMBA_CLIP_MANIPULATION_DATA)"
                )
            self._cache[name] = np.load(self.directory / name)
        return self._cache[name]

    def check(self, datasets: Sequence[str]) -> None:
        """Load the files ``datasets`` need now, so a missing one fails before any image is written."""
        for d in datasets:
            name = NEEDS.get(get_spec(d).name)
            if name is not None:
                self._load(name)

    @property
    def mean_spectrum(self) -> np.ndarray:
        return self._load("mean_power_spectrum_grey.npy")

    @property
    def gamma_table(self) -> np.ndarray:
        return self._load("x_gamma_function.npy").reshape(-1)


def manipulate(
    dataset: str, condition: str, image, rng: Rng = None, resources: Optional[Resources] = None
) -> np.ndarray:
    """Apply the manipulation of ``dataset`` at ``condition`` (any spelling of the condition).

    Returns an ``(H, W, 3)`` float image in [0, 1]. ``ValueError`` for non-parametric datasets or
    unknown conditions.
    """
    spec = get_spec(dataset)
    if not spec.parametric:
        raise ValueError(
            f"dataset {dataset!r} is not a parametric manipulation; accepted: {list(PARAMETRIC_DATASETS)}"
        )
    cond = spec.canonical_condition(condition)
    res = resources or Resources()
    img = to_float(image)
    if img.ndim == 2:
        img = grey_to_rgb(img)
    name = spec.name
    if name == "colour":
        return img.copy() if cond == "cr" else greyscale(img)
    if name == "contrast":
        return grayscale_contrast(img, int(cond[1:]) / 100.0)
    if name == "high-pass":
        return high_pass(img, float(cond))
    if name == "low-pass":
        return low_pass(img, float(cond))
    if name == "phase-scrambling":
        return phase_scrambling(img, float(cond), rng=rng)
    if name == "power-equalisation":
        return greyscale(img) if cond == "0" else power_equalisation(img, res.mean_spectrum)
    if name == "false-colour":
        return img.copy() if cond == "True" else false_colour(img, res.gamma_table)
    if name == "rotation":
        return rotate(img, int(cond))
    if name.startswith("eidolon"):
        reach, _, grain = cond.split("-")
        return eidolon(img, float(reach), float(spec.extra["coherence"]), float(grain), rng=rng)
    if name == "uniform-noise":
        return uniform_noise(img, float(cond), rng=rng)
    raise AssertionError(f"unhandled dataset {name}")  # pragma: no cover
