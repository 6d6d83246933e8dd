"""Landsat 5 TM and Landsat 8/9 OLI bands as the Landsat 7 ETM+ digital numbers of the HKH layout.

Models learn on HKH fused tiles, whose bands are ETM+ DN. A scene of another sensor is brought
into that layout pixel by pixel, through physical units, so that a model trained on ETM+ runs on
a 1990 TM scene and a 2020 OLI scene:

* reflective bands, mapped by wavelength (:attr:`Sensor.optical`): the sensor's DN -> the
  top-of-atmosphere reflectance it measured (TM: radiance over its solar irradiance; OLI: its
  Level-1 reflectance scaling, less OLI's mean difference to ETM+ over the same ground,
  :attr:`Sensor.between_sensors`) -> the radiance ETM+ would have measured over that reflectance
  under the same sun (ETM+ solar irradiance) -> ETM+ DN in the HKH tiles' gain;
* thermal: DN -> radiance -> brightness temperature -> ETM+ DN at both thermal gains;
* panchromatic: TM has none and OLI's leaves out the near infrared, so it is synthesised from the
  green, red and near-infrared radiances, weighted by the share of the ETM+ pan's range each
  covers (:data:`PAN_WEIGHTS`);
* the quality band passes through (Collection 2 QA_PIXEL has the same cloud and snow bits for
  all three sensors).

The fill value 0 stays 0. What is an approximation is said per channel in :attr:`Sensor.notes`.
Constants are the published ones (Chander et al. 2009, Remote Sens. Environ. 113; the Landsat 8
and 9 data users handbooks); a scene's MTL file, when there is one, overrides the DN scaling.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from al_loop.bands import RAW_BANDS as ETM_BANDS
from al_loop.bands import THERMAL_GAIN, THERMAL_K1, THERMAL_K2

_QCAL_MIN, _QCAL_MAX = 1.0, 255.0

# The ETM+ gain of the HKH tiles' reflective bands, (LMIN, LMAX) in W/(m² sr µm). ETM+ gains are
# set per scene; these are the gains of the real tile LE07_134040_20070922: with B2-B4 in high
# gain and B8 in low gain, the pan synthesised from B2-B4 matches the tile's own B8 (bias 0.3 DN,
# mean error 4 DN; 27 DN off with all bands in one gain; see tests/test_sensors.py). B1, B5 and B7
# cannot be checked that way and are taken in high gain like B2-B4 (Landsat 7's land rule).
ETM_GAIN: dict[str, tuple[float, float]] = {
    "B1": (-6.2, 191.6),
    "B2": (-6.4, 196.5),
    "B3": (-5.0, 152.9),
    "B4": (-5.1, 157.4),
    "B5": (-1.0, 31.06),
    "B7": (-0.35, 10.80),
    "B8": (-4.7, 243.1),  # low gain
}
# Exo-atmospheric solar irradiance, W/(m² µm) (Chander et al. 2009, table 11).
ETM_ESUN = {"B1": 1997.0, "B2": 1812.0, "B3": 1533.0, "B4": 1039.0, "B5": 230.8, "B7": 84.90, "B8": 1362.0}
TM5_ESUN = {"B1": 1983.0, "B2": 1796.0, "B3": 1536.0, "B4": 1031.0, "B5": 220.0, "B7": 83.44}

# The ETM+ pan (0.52-0.90 µm) split between the bands it spans: green to 0.615 µm, red to 0.73 µm,
# near infrared beyond; weights are the shares of its range.
PAN_WEIGHTS = {"B2": 0.25, "B3": 0.30, "B4": 0.45}

THERMAL_CHANNELS = tuple(THERMAL_GAIN)  # the ETM+ thermal band's low- and high-gain channels


@dataclass(frozen=True)
class Sensor:
    """What one Landsat sensor's band files mean in the HKH (ETM+) layout.

    ``optical`` maps an ETM+ reflective channel to the sensor's own band of the same wavelengths;
    ``thermal`` is the own band that gives both ETM+ thermal channels; ``unused`` are own bands
    that feed nothing (their files are ignored)."""

    code: str
    name: str
    optical: Mapping[str, str]
    thermal: str | None
    unused: tuple[str, ...] = ()
    notes: Mapping[str, str] = field(default_factory=dict)
    bits: int = 8  # of the Level-1 DN
    # ETM+ channel -> (slope, intercept) of this sensor's reflectance against ETM+'s over the same
    # ground (own = slope * ETM+ + intercept); removed on the way to ETM+ DN
    between_sensors: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def native(self) -> bool:
        """ETM+ itself: bands are taken as they are."""
        return self.code == "LE07"

    @property
    def bands(self) -> tuple[str, ...]:
        """The sensor's own band names that feed the layout, in the layout's order."""
        if self.native:
            return ETM_BANDS
        own = [self.optical[c] for c in ETM_BANDS if c in self.optical]
        return (*own, *([self.thermal] if self.thermal else []), "BQA")

    @property
    def reflective(self) -> tuple[str, ...]:
        """Own bands that give a 30 m reflective channel (the scene grid and the valid-pixel rule)."""
        return tuple(self.optical[c] for c in ("B1", "B2", "B3", "B4", "B5", "B7") if c in self.optical)


_PAN_NOTE = ("synthesised from green, red and near-infrared radiance (0.25/0.30/0.45); "
             "on the real ETM+ tile it is within 4 DN of the measured pan on average")
ETM_PLUS = Sensor("LE07", "Landsat 7 ETM+", {b: b for b in ("B1", "B2", "B3", "B4", "B5", "B7", "B8")}, None)
TM5 = Sensor(
    "LT05", "Landsat 5 TM", {b: b for b in ("B1", "B2", "B3", "B4", "B5", "B7")}, "B6",
    notes={
        "B1": "TM band 1 (0.45-0.52 µm), same wavelengths",
        "B6_VCID_1": "TM band 6 (10.4-12.5 µm, 120 m) as brightness temperature, at ETM+ low gain",
        "B6_VCID_2": "TM band 6 (10.4-12.5 µm, 120 m) as brightness temperature, at ETM+ high gain",
        "B8": "no TM pan: " + _PAN_NOTE,
    },
)
_OLI = {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B5", "B5": "B6", "B7": "B7"}
_ADJUSTED = "; the mean difference to ETM+ removed (Roy et al. 2016, fitted on US surface reflectance)"
_OLI_NOTES = {
    "B1": "OLI band 2 (0.45-0.51 µm)" + _ADJUSTED,
    "B2": "OLI band 3 (0.53-0.59 µm)" + _ADJUSTED,
    "B3": "OLI band 4 (0.64-0.67 µm)" + _ADJUSTED,
    "B4": "OLI band 5 (0.85-0.88 µm): approximation, narrower than ETM+ band 4 (0.77-0.90 µm)" + _ADJUSTED,
    "B5": "OLI band 6 (1.57-1.65 µm)" + _ADJUSTED,
    "B7": "OLI band 7 (2.11-2.29 µm)" + _ADJUSTED,
    "B6_VCID_1": "TIRS band 10 (10.6-11.2 µm): approximation, narrower than ETM+ band 6 (10.4-12.5 µm)",
    "B6_VCID_2": "TIRS band 10 (10.6-11.2 µm): approximation, narrower than ETM+ band 6 (10.4-12.5 µm)",
    "B8": "OLI's pan (0.50-0.68 µm) leaves out the near infrared: " + _PAN_NOTE,
    "BQA": "QA_PIXEL; OLI adds a cirrus bit",
}
# OLI against ETM+ reflectance over the same ground and day, reduced major axis fits over the
# conterminous US (Roy et al. 2016, Remote Sens. Environ. 185, table 2, surface reflectance; used
# here on top-of-atmosphere reflectance, intercepts of at most 0.003 taken as they are).
_ROY_RMA = {"B1": (0.9785, -0.0095), "B2": (0.9542, -0.0016), "B3": (0.9825, -0.0022),
            "B4": (1.0073, -0.0021), "B5": (1.0171, -0.0030), "B7": (0.9949, 0.0029)}
OLI8 = Sensor("LC08", "Landsat 8 OLI/TIRS", _OLI, "B10", ("B1", "B8", "B9", "B11"), _OLI_NOTES, 16, _ROY_RMA)
OLI9 = Sensor("LC09", "Landsat 9 OLI-2/TIRS-2", _OLI, "B10", ("B1", "B8", "B9", "B11"), _OLI_NOTES, 16, _ROY_RMA)
SENSORS: dict[str, Sensor] = {s.code: s for s in (ETM_PLUS, TM5, OLI8, OLI9)}

# Published DN scaling, for scenes without an MTL file.
# TM5 (LMIN, LMAX) for QCAL 1-255, LPGS products (Chander et al. 2009, table 1), as (mult, add).
_TM5_LIMITS = {"B1": (-2.28, 193.0), "B2": (-4.29, 365.0), "B3": (-2.21, 264.0), "B4": (-2.39, 221.0),
               "B5": (-0.49, 30.2), "B6": (1.2378, 15.303), "B7": (-0.15, 16.5)}
_THERMAL_K = {"LT05": (607.76, 1260.56), "LC08": (774.8853, 1321.0789), "LC09": (799.0284, 1329.2405)}
_TIRS_RADIANCE = {"LC08": (3.342e-4, 0.1), "LC09": (3.8e-4, 0.1)}
_OLI_REFLECTANCE = (2.0e-5, -0.1)  # every OLI reflective band, Collections 1 and 2


def _limits_to_scaling(lmin: float, lmax: float) -> tuple[float, float]:
    mult = (lmax - lmin) / (_QCAL_MAX - _QCAL_MIN)
    return mult, lmin - mult * _QCAL_MIN


@dataclass(frozen=True)
class Calibration:
    """The DN scaling of one scene: ``radiance[band] = (mult, add)`` gives W/(m² sr µm),
    ``reflectance[band]`` gives reflectance times the sine of the sun's elevation (OLI), ``thermal``
    the band's Planck constants (K1, K2), ``earth_sun_au`` the Earth-Sun distance on the day."""

    radiance: Mapping[str, tuple[float, float]]
    reflectance: Mapping[str, tuple[float, float]]
    thermal: tuple[float, float] | None
    earth_sun_au: float
    source: str  # "MTL file" or "published constants"


def earth_sun_distance(day: dt.date) -> float:
    """Earth-Sun distance in astronomical units (within 0.0002 AU over the year)."""
    return 1 - 0.01672 * math.cos(math.radians(0.9856 * (day.timetuple().tm_yday - 4)))


def calibration(sensor: Sensor, acquired: dt.date | None, mtl: Mapping[str, str] | None = None) -> Calibration:
    """The DN scaling of a scene: its MTL values (``RADIANCE_MULT_BAND_6`` ...) where the file has
    them, else the sensor's published constants. Without a date or an MTL distance, the Earth-Sun
    distance is taken as 1 AU (reflectance off by up to 3.4 %)."""
    mtl = mtl or {}
    radiance: dict[str, tuple[float, float]] = {}
    reflectance: dict[str, tuple[float, float]] = {}
    if sensor.code == "LT05":
        radiance = {band: _limits_to_scaling(*limits) for band, limits in _TM5_LIMITS.items()}
    elif sensor.code in _TIRS_RADIANCE:
        radiance = {"B10": _TIRS_RADIANCE[sensor.code]}
        reflectance = {band: _OLI_REFLECTANCE for band in sensor.optical.values()}
    used_mtl = False
    for table, kind in ((radiance, "RADIANCE"), (reflectance, "REFLECTANCE")):
        for band in list(table):
            number = band[1:]
            keys = (f"{kind}_MULT_BAND_{number}", f"{kind}_ADD_BAND_{number}")
            if all(k in mtl for k in keys):
                table[band] = (float(mtl[keys[0]]), float(mtl[keys[1]]))
                used_mtl = True
    thermal = _THERMAL_K.get(sensor.code)
    if sensor.thermal and f"K1_CONSTANT_BAND_{sensor.thermal[1:]}" in mtl:
        number = sensor.thermal[1:]
        thermal = (float(mtl[f"K1_CONSTANT_BAND_{number}"]), float(mtl[f"K2_CONSTANT_BAND_{number}"]))
        used_mtl = True
    if "EARTH_SUN_DISTANCE" in mtl:
        distance, used_mtl = float(mtl["EARTH_SUN_DISTANCE"]), True
    else:
        distance = earth_sun_distance(acquired) if acquired else 1.0
    return Calibration(radiance, reflectance, thermal, distance, "MTL file" if used_mtl else "published constants")


def channels_from(sensor: Sensor, own_bands: set[str]) -> list[str]:
    """The ETM+ channels (in :data:`ETM_BANDS` order) that the sensor's ``own_bands`` give."""
    if sensor.native:
        return [c for c in ETM_BANDS if c in own_bands]
    have = {c for c, own in sensor.optical.items() if own in own_bands}
    if sensor.thermal in own_bands:
        have |= set(THERMAL_CHANNELS)
    if set(PAN_WEIGHTS) <= have:
        have.add("B8")
    if "BQA" in own_bands:
        have.add("BQA")
    return [c for c in ETM_BANDS if c in have]


def _etm_limits(channel: str) -> tuple[float, float]:
    return THERMAL_GAIN[channel] if channel in THERMAL_CHANNELS else ETM_GAIN[channel]


def _etm_radiance_from_dn(dn: np.ndarray, channel: str) -> np.ndarray:
    lmin, lmax = _etm_limits(channel)
    return (dn - _QCAL_MIN) * (lmax - lmin) / (_QCAL_MAX - _QCAL_MIN) + lmin


def _etm_dn(radiance: np.ndarray, channel: str) -> np.ndarray:
    """ETM+ DN as the sensor would quantise it (rounded, 1-255), from radiance."""
    lmin, lmax = _etm_limits(channel)
    dn = (radiance - lmin) / (lmax - lmin) * (_QCAL_MAX - _QCAL_MIN) + _QCAL_MIN
    return np.clip(np.round(dn), _QCAL_MIN, _QCAL_MAX).astype(np.float32)


def _planck_radiance(kelvin: np.ndarray, k1: float, k2: float) -> np.ndarray:
    return k1 / np.expm1(k2 / kelvin)


def _kelvin(radiance: np.ndarray, k1: float, k2: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return k2 / np.log(k1 / np.maximum(radiance, 1e-6) + 1)


def _etm_radiance(sensor: Sensor, cal: Calibration, channel: str, dn: np.ndarray) -> np.ndarray:
    """The radiance ETM+ would measure in ``channel`` over the reflectance the sensor measured."""
    own = sensor.optical[channel]
    if own in cal.reflectance:
        mult, add = cal.reflectance[own]
        slope, intercept = sensor.between_sensors.get(channel, (1.0, 0.0))
        etm_reflectance = (mult * dn + add - intercept) / slope
        return etm_reflectance * ETM_ESUN[channel] / (math.pi * cal.earth_sun_au**2)
    mult, add = cal.radiance[own]
    return (mult * dn + add) * ETM_ESUN[channel] / TM5_ESUN[own]


def to_etm(raw: Mapping[str, np.ndarray], sensor: Sensor, cal: Calibration | None = None) -> dict[str, np.ndarray]:
    """The ETM+ channels (DN, float32) of a sensor's own bands ``raw`` (DN as float, 0 = fill)."""
    if sensor.native:
        return dict(raw)
    if cal is None:
        raise ValueError(f"{sensor.name} bands need a calibration to become ETM+ DN")
    out: dict[str, np.ndarray] = {}
    radiance: dict[str, np.ndarray] = {}
    for channel, own in sensor.optical.items():
        if own in raw:
            radiance[channel] = _etm_radiance(sensor, cal, channel, raw[own])
            out[channel] = np.where(raw[own] > 0, _etm_dn(radiance[channel], channel), 0).astype(np.float32)
    thermal = sensor.thermal
    if thermal is not None and thermal in raw and cal.thermal:
        dn = raw[thermal]
        mult, add = cal.radiance[thermal]
        kelvin = _kelvin(mult * dn + add, *cal.thermal)
        etm_radiance = _planck_radiance(kelvin, THERMAL_K1, THERMAL_K2)
        for channel in THERMAL_CHANNELS:
            out[channel] = np.where(dn > 0, _etm_dn(etm_radiance, channel), 0).astype(np.float32)
    if set(PAN_WEIGHTS) <= set(radiance):
        pan = np.asarray(sum(weight * radiance[c] for c, weight in PAN_WEIGHTS.items()))
        filled = np.logical_or.reduce([out[c] == 0 for c in PAN_WEIGHTS])
        out["B8"] = np.where(filled, 0, _etm_dn(pan, "B8")).astype(np.float32)
    if "BQA" in raw:
        out["BQA"] = np.asarray(raw["BQA"], dtype=np.float32)
    return out


def synthesised_pan(channels: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ETM+ pan DN synthesised from ETM+ B2-B4 DN, as :func:`to_etm` does for TM and OLI."""
    pan = np.asarray(sum(w * _etm_radiance_from_dn(np.asarray(channels[c], np.float32), c)
                         for c, w in PAN_WEIGHTS.items()))
    return _etm_dn(pan, "B8")


def from_etm(channels: Mapping[str, np.ndarray], sensor: Sensor, cal: Calibration) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_etm` for the reflective, thermal and quality bands: what ``sensor``
    would have recorded (DN, rounded) where ETM+ recorded ``channels``. For synthetic scenes of
    other sensors; the ETM+ pan has no counterpart and is dropped."""
    top = 255.0 if sensor.code == "LT05" else 65535.0
    out: dict[str, np.ndarray] = {}
    for channel, own in sensor.optical.items():
        if channel not in channels:
            continue
        dn = np.asarray(channels[channel], np.float32)
        etm_radiance = _etm_radiance_from_dn(dn, channel)
        if own in cal.reflectance:
            mult, add = cal.reflectance[own]
            slope, intercept = sensor.between_sensors.get(channel, (1.0, 0.0))
            value = slope * etm_radiance * math.pi * cal.earth_sun_au**2 / ETM_ESUN[channel] + intercept
        else:
            mult, add = cal.radiance[own]
            value = etm_radiance * TM5_ESUN[own] / ETM_ESUN[channel]
        own_dn = np.clip(np.round((value - add) / mult), 1, top)
        out[own] = np.where(dn > 0, own_dn, 0).astype(np.float32)
    if sensor.thermal and "B6_VCID_1" in channels and cal.thermal:
        dn = np.asarray(channels["B6_VCID_1"], np.float32)
        kelvin = _kelvin(_etm_radiance_from_dn(dn, "B6_VCID_1"), THERMAL_K1, THERMAL_K2)
        mult, add = cal.radiance[sensor.thermal]
        own_dn = np.clip(np.round((_planck_radiance(kelvin, *cal.thermal) - add) / mult), 1, top)
        out[sensor.thermal] = np.where(dn > 0, own_dn, 0).astype(np.float32)
    if "BQA" in channels:
        out["BQA"] = np.asarray(channels["BQA"], np.float32)
    return out
