"""Optical-flow accuracy against a reference flow: the end-point error and the KITTI outlier rates.

With ``f`` the estimated and ``g`` the reference flow at a pixel (both ``(dx, dy)`` in pixels) and
``e = ||f - g||_2`` its end-point error, over the pixels marked valid (all of them without a mask):

==============  ===============================================  ==================================================
column          formula                                          source
==============  ===============================================  ==================================================
``epe``         mean ``e``                                       Baker et al. 2011 (Middlebury), Sintel, KITTI
``over_1px``    fraction of pixels with ``e > 1``                the ">1px" outlier rate of FlyingThings / Sintel
``over_3px``    fraction of pixels with ``e > 3``                the ">3px" rate (KITTI 2012's Out-Noc/Out-All)
``fl_all``      fraction with ``e > 3`` and ``e > 0.05 ||g||``   KITTI 2015 ``Fl-all`` (Menze & Geiger 2015, devkit)
==============  ===============================================  ==================================================

The rates are fractions in [0, 1] (KITTI prints them in percent). A clip's values pool every valid pixel of every
frame pair, so each pixel counts once, as in the benchmarks. Sums are accumulated in float64.

:func:`flow_errors` is the pure computation; :func:`evaluate_video` is one row of ``vpt eval flow``'s
``flow_metrics`` table (a video's estimated flow, or another estimator's flow file, against its reference flow
file), and :func:`mean_row` the mean over videos the command prints last.
"""

from __future__ import annotations

import numpy as np

METRICS = ("epe", "over_1px", "over_3px", "fl_all")
FL_RELATIVE = 0.05  # KITTI: an outlier is also more than 5 % of the true motion away
FL_ABSOLUTE = 3.0


def endpoint_error(flow: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``||flow - reference||_2`` per pixel: ``[..., 2]`` flows of one shape -> ``float32 [...]``."""
    flow, reference = np.asarray(flow), np.asarray(reference)
    if flow.shape != reference.shape or flow.shape[-1:] != (2,):
        raise ValueError(f"flows must have one shape [..., 2], got {flow.shape} and {reference.shape}")
    return np.linalg.norm(flow.astype(np.float32) - reference.astype(np.float32), axis=-1)


def flow_errors(flow: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """``{epe, over_1px, over_3px, fl_all, pixels}`` of ``flow`` against ``reference`` (both ``[..., 2]``) over the
    pixels where ``valid`` (``[...]``, any dtype, nonzero = valid) holds; all pixels without it. With no valid pixel
    the four metrics are NaN and ``pixels`` is 0."""
    error = endpoint_error(flow, reference)
    magnitude = np.linalg.norm(np.asarray(reference, np.float32), axis=-1)
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        if valid.shape != error.shape:
            raise ValueError(f"valid must have shape {error.shape}, got {valid.shape}")
        error, magnitude = error[valid], magnitude[valid]
    pixels = int(error.size)
    if pixels == 0:
        return {**dict.fromkeys(METRICS, float("nan")), "pixels": 0}
    return {
        "epe": float(error.mean(dtype=np.float64)),
        "over_1px": float(np.count_nonzero(error > 1.0)) / pixels,
        "over_3px": float(np.count_nonzero(error > 3.0)) / pixels,
        "fl_all": float(np.count_nonzero((error > FL_ABSOLUTE) & (error > FL_RELATIVE * magnitude))) / pixels,
        "pixels": pixels,
    }


def mean_row(rows: list[dict]) -> dict[str, float] | None:
    """Each metric's mean over the rows without an error (every video weighs the same); None when there is none."""
    good = [row for row in rows if row["error"] is None]
    if not good:
        return None
    return {name: float(np.mean([row[name] for row in good])) for name in METRICS}
