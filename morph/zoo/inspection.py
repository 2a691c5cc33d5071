"""The seed's case study, generated: camera frames of machined parts to sort by surface defect.

Each frame is a monochrome ``size x size`` view of one steel part (a disc or
a rounded square, some with a centre bore) lying at a random pose and scale
on a textured conveyor belt, with brushed-metal streaks, dust specks on every
class, and one of five surface conditions:

* ``none``: a good part;
* ``scratch``: a thin, straight, bright (specular) groove;
* ``dent``: a shallow depression, visible only through its shading, which
  depends on where the light falls from;
* ``stain``: a soft rust-coloured blot, whose contrast on the mono sensor
  depends on the lamps' colour temperature;
* ``crack``: a thin, dark, jagged line.

Defect strength varies from faint to plain, so some frames need a model with
capacity. The light (`morph.zoo.lighting`) sets intensity, colour temperature
and direction; the sensor adds shot and read noise. Everything is drawn from
one seeded generator: the same seed gives the same frames, bit for bit.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> frame = render_frame(rng, CLASSES.index("crack"), DAY_SHIFT.mean(), size=32)
>>> frame.shape, frame.dtype, bool(0.0 <= frame.min() and frame.max() <= 1.0)
((32, 32), dtype('float32'), True)
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from morph.zoo.lighting import DAY_SHIFT, Lighting, light_direction, sensor_reading  # noqa: F401  (DAY_SHIFT: doctest)

CLASSES = ("none", "scratch", "dent", "stain", "crack")

STEEL_RGB = np.array([0.62, 0.62, 0.64])
RUST_RGB = np.array([0.70, 0.28, 0.10])
BELT_RGB = np.array([0.20, 0.22, 0.21])
READ_NOISE, SHOT_NOISE = 0.015, 0.025


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    return yy, xx


@lru_cache(maxsize=8)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    i = np.arange(size)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return g / g.sum(axis=1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-spread noise blurred at scale ``sigma`` (pixels)."""
    g = _blur_matrix(size, sigma)
    n = g @ rng.standard_normal((size, size)) @ g.T
    return (n - n.mean()) / (n.std() + 1e-9)


def _segment_distance(yy, xx, y0, x0, y1, x1) -> np.ndarray:
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def _line_profile(dist: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-0.5 * (dist / width) ** 2)


def _part_mask(rng, size, yy, xx):
    """Soft mask of the part, its centre, radius and orientation."""
    cy, cx = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    radius = rng.uniform(0.28, 0.38) * size
    angle = rng.uniform(0, math.pi)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    power = 2.0 if rng.random() < 0.5 else 4.0      # disc or rounded square
    dist = (np.abs(u) ** power + np.abs(v) ** power) ** (1 / power) - radius
    mask = np.clip(0.5 - dist, 0.0, 1.0)
    bore = 0.0
    if rng.random() < 0.5:
        bore = rng.uniform(0.18, 0.28) * radius
        mask = mask * np.clip(np.hypot(u, v) - bore + 0.5, 0.0, 1.0)
    return mask, (cy, cx), radius, bore, v


def _defect_site(rng, centre, radius, bore):
    r = rng.uniform(max(bore + 2.0, 0.2 * radius), 0.7 * radius)
    a = rng.uniform(0, 2 * math.pi)
    return centre[0] + r * math.sin(a), centre[1] + r * math.cos(a)


def _scratch(rng, yy, xx, site, radius):
    length = rng.uniform(0.45, 0.9) * radius
    a = rng.uniform(0, math.pi)
    dy, dx = 0.5 * length * math.sin(a), 0.5 * length * math.cos(a)
    dist = _segment_distance(yy, xx, site[0] - dy, site[1] - dx, site[0] + dy, site[1] + dx)
    return _line_profile(dist, rng.uniform(0.5, 0.8)) * rng.uniform(0.35, 0.75)


def _crack(rng, yy, xx, site, radius):
    dist = np.full(yy.shape, np.inf)
    y, x, a = site[0], site[1], rng.uniform(0, 2 * math.pi)
    for _ in range(rng.integers(3, 5)):
        step = rng.uniform(0.15, 0.3) * radius
        a += rng.uniform(-1.0, 1.0)
        ny, nx = y + step * math.sin(a), x + step * math.cos(a)
        dist = np.minimum(dist, _segment_distance(yy, xx, y, x, ny, nx))
        y, x = ny, nx
    return _line_profile(dist, rng.uniform(0.45, 0.7)) * rng.uniform(0.4, 0.8)


def _stain(rng, yy, xx, site, radius):
    alpha = np.zeros(yy.shape)
    for _ in range(rng.integers(2, 4)):
        oy, ox = rng.normal(0, 1.2, size=2)
        s = rng.uniform(1.2, 2.4)
        alpha += np.exp(-0.5 * ((yy - site[0] - oy) ** 2 + (xx - site[1] - ox) ** 2) / s ** 2)
    return np.clip(alpha, 0.0, 1.0) * rng.uniform(0.5, 0.9)


def _dent(rng, yy, xx, site, radius):
    """Depth map of a shallow depression (shaded later, by the light's direction)."""
    s = rng.uniform(1.3, 2.3)
    return -rng.uniform(1.6, 2.8) * np.exp(-0.5 * ((yy - site[0]) ** 2 + (xx - site[1]) ** 2) / s ** 2)


def _dust(rng, yy, xx, size):
    """Specks on every frame, light or dark: short and round, unlike scratches and cracks."""
    out = np.zeros(yy.shape)
    for _ in range(rng.integers(0, 4)):
        y, x = rng.uniform(0, size, size=2)
        out += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.35) * np.exp(
            -0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / rng.uniform(0.35, 0.6) ** 2)
    return out


def render_frame(rng: np.random.Generator, label: int, lighting: Lighting, size: int = 32) -> np.ndarray:
    """One camera frame [size, size] float32 in [0, 1] of a part with defect class ``label``."""
    yy, xx = _grid(size)
    mask, centre, radius, bore, along = _part_mask(rng, size, yy, xx)
    belt = BELT_RGB * (1.0 + 0.25 * _smooth_noise(rng, size, 2.5)[..., None]
                       + 0.08 * rng.standard_normal((size, size, 1)))
    phases = rng.uniform(0, 2 * math.pi, size=3)
    freqs = rng.uniform(0.8, 2.2, size=3)
    streaks = sum(np.sin(f * along + p) for f, p in zip(freqs, phases)) / 3.0
    steel = STEEL_RGB * (1.0 + 0.06 * streaks[..., None])
    height = np.zeros((size, size))
    kind = CLASSES[label]
    if kind != "none":
        site = _defect_site(rng, centre, radius, bore)
        if kind == "scratch":
            steel = steel * (1.0 + _scratch(rng, yy, xx, site, radius)[..., None])
        elif kind == "crack":
            steel = steel * (1.0 - _crack(rng, yy, xx, site, radius)[..., None])
        elif kind == "stain":
            alpha = _stain(rng, yy, xx, site, radius)[..., None]
            steel = steel * (1.0 - alpha) + RUST_RGB * alpha
        else:
            height = _dent(rng, yy, xx, site, radius)
    reflect = belt * (1.0 - mask[..., None]) + steel * mask[..., None]
    reading = sensor_reading(reflect, lighting) * (1.0 + _dust(rng, yy, xx, size))
    # Shading: the part's bevelled rim and any dent tilt the surface towards or away from the light.
    gy, gx = np.gradient(height + 1.5 * mask)
    ly, lx = light_direction(lighting)[::-1]
    reading = reading * np.clip(1.0 + 0.35 * (gx * lx + gy * ly), 0.2, 2.0)
    across = ((xx / (size - 1)) * 2 - 1) * lx + ((yy / (size - 1)) * 2 - 1) * ly
    signal = lighting.intensity * reading * (1.0 + lighting.gradient * across)
    noisy = signal + np.sqrt(np.maximum(signal, 0.0)) * SHOT_NOISE * rng.standard_normal(signal.shape) \
        + READ_NOISE * rng.standard_normal(signal.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)
