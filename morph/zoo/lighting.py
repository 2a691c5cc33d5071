"""Factory lighting for the inspection task: the light a frame was shot in, its drift, and its undoing.

A `Lighting` is what the camera's scene is lit by: an intensity, a colour
temperature and the azimuth the light falls from (which shades dents and
makes a gradient across the frame). The day shift's lights are bright,
near-daylight white and from above; the night shift runs on dimmer, warmer
lamps falling from one side. `shift_lighting` draws one frame's light at a
point ``drift`` in [0, 1] between the two, so a request stream can walk
from day to night.

The camera is monochrome. Its reading of a surface is the illuminant's RGB
times the surface's RGB reflectance, weighted by the sensor's spectral
response, so the colour temperature changes the *contrast* between
materials: a rust stain is darker than bare steel under daylight and much
less so under a warm lamp.

`ShiftChange` schedules the drift of a shift change over time, for a request
stream to follow. `normalise_illumination` is the preprocessing stage that
undoes most of it: it removes the frame's linear brightness gradient
(measured on the belt around the part) and sets its exposure back to the day
shift's. The warm light's lower stain contrast it cannot undo, which is what
remains of the drop.

>>> day, night = DAY_SHIFT.mean(), NIGHT_SHIFT.mean()
>>> day.intensity > night.intensity, day.colour_temp_k > night.colour_temp_k
(True, True)
>>> [round(float(c), 3) for c in illuminant_rgb(6500.0)]
[1.0, 1.0, 1.0]
>>> warm = illuminant_rgb(3000.0)
>>> bool(warm[0] > warm[1] > warm[2])
True
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> frame = rng.uniform(0.2, 0.6, size=(32, 32)).astype(np.float32)
>>> dim = frame * 0.6 * (1.0 + 0.2 * np.linspace(-1.0, 1.0, 32, dtype=np.float32))   # dimmer, lit from one side
>>> a, b = normalise_illumination(frame), normalise_illumination(dim)
>>> bool(np.abs(a - b).mean() < 0.25 * np.abs(frame - dim).mean())   # most of the difference undone
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Relative response of the monochrome sensor to red, green and blue.
SENSOR_RGB = np.array([0.35, 0.45, 0.20])


@dataclass(frozen=True)
class Lighting:
    """The light one frame is shot in."""

    intensity: float          # scales every reading (1.0: the day shift's nominal)
    colour_temp_k: float      # correlated colour temperature of the lamps
    azimuth_deg: float        # where the light falls from, in the image plane
    gradient: float           # brightness change across the frame, fraction of the mean


@dataclass(frozen=True)
class ShiftLighting:
    """The distribution a shift's lighting is drawn from: centres and half-widths."""

    intensity: tuple[float, float]
    colour_temp_k: tuple[float, float]
    azimuth_deg: tuple[float, float]
    gradient: tuple[float, float]

    def mean(self) -> Lighting:
        return Lighting(self.intensity[0], self.colour_temp_k[0], self.azimuth_deg[0], self.gradient[0])


#: Overhead daylight-white panels: the conditions the zoo is trained on.
DAY_SHIFT = ShiftLighting(intensity=(1.0, 0.12), colour_temp_k=(5600.0, 600.0), azimuth_deg=(90.0, 180.0),
                          gradient=(0.08, 0.08))
#: Fewer, warmer lamps along one wall: a third dimmer, warm white (3400 K, where the day's
#: panels are 5600 K), lit from one side with a gradient across the frame (up to twice the day's).
NIGHT_SHIFT = ShiftLighting(intensity=(0.7, 0.05), colour_temp_k=(3400.0, 200.0), azimuth_deg=(20.0, 15.0),
                            gradient=(0.22, 0.06))


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def shift_lighting(rng: np.random.Generator, drift: float = 0.0) -> Lighting:
    """One frame's lighting, ``drift`` of the way from the day shift (0) to the night shift (1)."""
    t = min(max(float(drift), 0.0), 1.0)
    draw = {}
    for name in ("intensity", "colour_temp_k", "azimuth_deg", "gradient"):
        centre, half = _lerp(getattr(DAY_SHIFT, name), getattr(NIGHT_SHIFT, name), t)
        draw[name] = centre + half * rng.uniform(-1.0, 1.0)
    draw["gradient"] = max(draw["gradient"], 0.0)
    return Lighting(**draw)


@dataclass(frozen=True)
class ShiftChange:
    """The lighting drift of a shift change, in scenario seconds: ``day_s`` of day light,
    a linear ramp over ``ramp_s`` to the night shift, ``night_s`` of night light, and
    (with ``back``) the same ramp back to day.

    >>> change = ShiftChange(day_s=10, ramp_s=20, night_s=30)
    >>> [change.drift_at(t) for t in (0, 10, 20, 30, 45, 60, 70, 80, 100)]
    [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    """

    day_s: float = 20.0
    ramp_s: float = 30.0
    night_s: float = 60.0
    back: bool = True

    def drift_at(self, t_s: float) -> float:
        """Drift in [0, 1] (0: day shift, 1: night shift) at scenario time ``t_s``."""
        t = t_s - self.day_s
        if t <= 0:
            return 0.0
        if t < self.ramp_s:
            return t / self.ramp_s
        t -= self.ramp_s
        if t <= self.night_s or not self.back:
            return 1.0
        t -= self.night_s
        return max(0.0, 1.0 - t / self.ramp_s)


@lru_cache(maxsize=256)
def _illuminant(temp_k: float) -> tuple[float, float, float]:
    # Tanner Helland's fit of the Planckian locus to sRGB, normalised so that
    # 6500 K is neutral white: enough to make warm light redder and dimmer in blue.
    t = temp_k / 100.0
    red = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    green = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    blue = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
    rgb = np.clip([red, green, blue], 1.0, 255.0)
    return tuple(float(c) for c in rgb)


def illuminant_rgb(temp_k: float) -> np.ndarray:
    """RGB of a lamp of colour temperature ``temp_k``, relative to a 6500 K white."""
    return np.array(_illuminant(round(float(temp_k), -1))) / np.array(_illuminant(6500.0))


def sensor_reading(reflectance_rgb: np.ndarray, lighting: Lighting) -> np.ndarray:
    """What the mono sensor reads off surfaces of RGB reflectance ``[..., 3]`` (before intensity and shading)."""
    weights = SENSOR_RGB * illuminant_rgb(lighting.colour_temp_k)
    return reflectance_rgb @ (weights / SENSOR_RGB.sum())


def light_direction(lighting: Lighting) -> np.ndarray:
    a = math.radians(lighting.azimuth_deg)
    return np.array([math.cos(a), math.sin(a)])


#: The day shift's bright level: the median over day-shift frames of their 90th-percentile
#: reading after the flat-field step (bare steel under the day's panels; measured on the generator).
REFERENCE_BRIGHT = 0.62


@lru_cache(maxsize=8)
def _plane_basis(h: int, w: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], axis=1)


def _belt_planes(flat: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Each frame's least-squares brightness plane fitted to its darker half (the belt
    around the part: the part's own bright pixels, wherever it lies, would tilt the plane)."""
    weights = (flat <= np.median(flat, axis=1, keepdims=True)).astype(np.float64)
    normal = np.einsum("nk,ki,kj->nij", weights, basis, basis) + 1e-9 * np.eye(basis.shape[1])
    rhs = np.einsum("nk,ki,nk->ni", weights, basis, flat)
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


def normalise_illumination(frames: np.ndarray, bright: float = REFERENCE_BRIGHT) -> np.ndarray:
    """Illumination normalisation of ``frames`` [..., H, W]: flat-field each frame by its
    belt's brightness plane (the light's gradient and direction, keeping its mean level),
    then set its exposure so its bright level (90th percentile) is the day shift's.
    A day-shift frame comes out nearly as it went in. Float32 in [0, 1]."""
    x = np.asarray(frames, dtype=np.float64)
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h * w)
    basis = _plane_basis(h, w)
    coef = _belt_planes(flat, basis)
    plane = np.maximum(coef @ basis.T, 1e-3)
    relative = flat * (np.maximum(coef[:, :1], 1e-3) / plane)
    level = np.maximum(np.percentile(relative, 90, axis=1, keepdims=True), 1e-3)
    out = np.clip(relative * (bright / level), 0.0, 1.0)
    return out.reshape(x.shape).astype(np.float32)


#: Preprocessing stages a node can switch on for its requests, by name (None: frames as shot).
PREPROCESSING = {"none": None, "illumination-normalisation": normalise_illumination}
