"""Error norms, the PI step-size controller and the initial step size.

The controller works with the *error order* of the embedded estimate (the
exponent is ``1 / (error_order + 1)``), not the order of the solution; see
`ButcherTableau.error_order`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

__all__ = ["PIController", "SolveOptions", "error_ratio", "initial_step"]


def _sum_sq(xs, per_row=False):
    if per_row:  # one sum per row: [B, 1]
        return tf.add_n([tf.reduce_sum(tf.square(x), axis=-1, keepdims=True) for x in xs])
    return tf.add_n([tf.reduce_sum(tf.square(x)) for x in xs])


def _count(xs, dtype, per_row=False):
    if per_row:
        return tf.cast(tf.add_n([tf.shape(x)[-1] for x in xs]), dtype)
    return tf.cast(tf.add_n([tf.size(x) for x in xs]), dtype)


def error_ratio(err, y0, y1, rtol, atol, err_secondary=None, include=None, per_row=False):
    """Mixed absolute/relative RMS error norm of a step; ``<= 1`` accepts it.

    ``scale_i = atol + rtol * max(|y0_i|, |y1_i|)`` and the norm is
    ``sqrt(mean((err_i / scale_i)**2))`` over all included leaves (Hairer's
    norm, as in SciPy and DifferentialEquations.jl). ``include`` is an optional
    list of booleans: leaves marked ``False`` are left out of the norm (the
    *seminorm* of Kidger et al. 2021 for adjoint parameter integrals).

    With ``err_secondary`` the DOP853 combination is used:
    ``E5² / sqrt((E5² + 0.01 E3²) N)``.

    ``per_row=True`` (the per-sample batched loop, `sensode.ode.batched`): the
    leaves are ``[B, N]`` rows, one sample each, and the norm is taken per row
    (``[B, 1]``).
    """
    idx = [i for i in range(len(err)) if include is None or include[i]]
    scaled = []
    scaled2 = []
    for i in idx:
        scale = atol + rtol * tf.maximum(tf.abs(y0[i]), tf.abs(y1[i]))
        scaled.append(err[i] / scale)
        if err_secondary is not None:
            scaled2.append(err_secondary[i] / scale)
    dtype = err[0].dtype
    n = _count(scaled, dtype, per_row)
    e5 = _sum_sq(scaled, per_row)
    if err_secondary is None:
        return tf.sqrt(e5 / n)
    e3 = _sum_sq(scaled2, per_row)
    denom = tf.sqrt((e5 + 0.01 * e3) * n)
    return tf.math.divide_no_nan(e5, denom)


@dataclasses.dataclass(frozen=True)
class PIController:
    """Proportional--integral step-size controller.

    ``factor = safety * err**(-beta1) * err_prev**beta2``, clipped to
    ``[factor_min, factor_max]``; after a rejected step only the proportional
    part is used and the step never grows. Defaults generalise Hairer's
    choice for DOPRI5 (``beta2 = 0.04``, ``beta1 = 1/5 - 0.75 beta2``) to any
    order: ``beta2 = 0.2 / k``, ``beta1 = 0.85 / k`` with
    ``k = error_order + 1``. ``beta2 = 0`` gives the classic I controller.

    References: Gustafsson, ACM TOMS 20(4), 1994; Hairer & Wanner, Solving
    ODEs II, Sec. IV.2; Söderlind, ACM TOMS 29(1), 2003.
    """

    beta1: float | None = None
    beta2: float | None = None
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self):
        for name in ("safety", "factor_min", "factor_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PIController: `{name}` must be positive")
        if not self.factor_min < 1.0 < self.factor_max:
            raise ValueError("PIController: need factor_min < 1 < factor_max")

    def coefficients(self, error_order: int):
        k = error_order + 1.0
        beta1 = 0.85 / k if self.beta1 is None else self.beta1
        beta2 = 0.2 / k if self.beta2 is None else self.beta2
        return beta1, beta2

    def factor(self, ratio, ratio_prev, accepted, error_order: int):
        """Step-size factor after a step with error ``ratio`` (scalar tensors)."""
        beta1, beta2 = self.coefficients(error_order)
        dtype = ratio.dtype
        tiny = tf.constant(1e-10, dtype)
        r = tf.maximum(ratio, tiny)
        grow = self.safety * r ** (-beta1) * tf.maximum(ratio_prev, tf.constant(1e-4, dtype)) ** beta2
        grow = tf.clip_by_value(grow, self.factor_min, self.factor_max)
        shrink = tf.clip_by_value(self.safety * r ** (-1.0 / (error_order + 1.0)), self.factor_min, 1.0)
        return tf.where(accepted, grow, shrink)


def initial_step(fn, t0, y0, f0, direction, order: int, rtol, atol, span, per_row=False):
    """Starting step size of Hairer, Nørsett & Wanner (Solving ODEs I, II.4).

    Costs one evaluation of ``fn``. Returns a positive scalar (no sign); with
    ``per_row=True`` (``[B, N]`` leaves, ``t0`` ``[B, 1]``) one per row, ``[B, 1]``.
    """
    dtype = t0.dtype
    scale = [atol + rtol * tf.abs(y) for y in y0]
    n = _count(y0, dtype, per_row)
    rms = lambda xs: tf.sqrt(_sum_sq([x / s for x, s in zip(xs, scale)], per_row) / n)  # noqa: E731
    d0 = rms(y0)
    d1 = rms(f0)
    small = tf.constant(1e-5, dtype)
    h0 = tf.where((d0 < small) | (d1 < small), tf.constant(1e-6, dtype), 0.01 * d0 / tf.maximum(d1, 1e-300 if dtype == tf.float64 else 1e-30))
    h0 = tf.minimum(h0, span)
    y1 = [y + direction * h0 * f for y, f in zip(y0, f0)]
    f1 = fn(t0 + direction * h0, y1)
    d2 = rms([a - b for a, b in zip(f1, f0)]) / h0
    dmax = tf.maximum(d1, d2)
    h1 = tf.where(
        dmax <= 1e-15,
        tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3),
        (0.01 / tf.maximum(dmax, 1e-15)) ** (1.0 / (order + 1.0)),
    )
    return tf.minimum(tf.minimum(100.0 * h0, h1), span)


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """Step-control options of one solve (tensors already of the state dtype).

    Attributes:
      rtol, atol: tolerances (scalars, or tensors broadcastable to the leaves).
      dt: fixed step (fixed-step methods), or the first step of an adaptive
        method (``None``: automatic).
      max_steps: static bound on attempted steps.
      dtmin, dtmax: bounds on the step size magnitude (``None``: a few ulps
        of ``t``, and the span).
      controller: step-size controller (`PIController()` when None).
    """

    rtol: Any = None
    atol: Any = None
    dt: Any = None
    max_steps: int = 10000
    dtmin: Any = None
    dtmax: Any = None
    controller: PIController | None = None

    def replace(self, **changes) -> "SolveOptions":
        return dataclasses.replace(self, **changes)
