"""One generic explicit Runge--Kutta step and its dense output.

States are *flat lists* of tensors (the loop flattens nests once), so the same
code serves a single state tensor, the forward-sensitivity state and the
augmented adjoint states. Tableau coefficients are Python floats: zero entries
are skipped while tracing, so the graph holds exactly the work of the method.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import tensorflow as tf

from .tableaus import ButcherTableau

__all__ = ["StepResult", "rk_step", "dense_stages", "dense_weights"]

FlatFn = Callable[[tf.Tensor, list], list]


def _combine(weights: Sequence[float], vectors: Sequence[list]):
    """``sum_i w_i v_i`` leaf by leaf, skipping zero weights; ``None`` if all zero."""
    out = None
    for w, v in zip(weights, vectors):
        if w == 0.0:
            continue
        term = [w * x for x in v]
        out = term if out is None else [o + x for o, x in zip(out, term)]
    return out


def _axpy(y: list, h, incr: list | None) -> list:
    if incr is None:
        return list(y)
    return [a + h * b for a, b in zip(y, incr)]


class StepResult(NamedTuple):
    y1: list
    f_new: list
    err: list | None
    err_secondary: list | None
    stages: list  # [k_1..k_s, f_new], each a flat list


def rk_step(fn: FlatFn, tab: ButcherTableau, t, y0: list, f0: list, h) -> StepResult:
    """Take one step of size ``h`` (signed) from ``(t, y0)`` with ``f0 = fn(t, y0)``.

    Costs ``tab.stages`` evaluations of ``fn``: stages 2..s and ``f_new``.
    """
    ks = [f0]
    for i in range(1, tab.stages):
        yi = _axpy(y0, h, _combine(tab.a[i, :i], ks))
        ks.append(fn(t + float(tab.c[i]) * h, yi))
    y1 = _axpy(y0, h, _combine(tab.b, ks))
    f_new = fn(t + h, y1)
    stages = ks + [f_new]
    err = err2 = None
    if tab.b_err is not None:
        e = _combine(tab.b_err, stages)
        err = [h * x for x in e] if e is not None else [tf.zeros_like(x) for x in y0]
    if tab.b_err_secondary is not None:
        e = _combine(tab.b_err_secondary, stages)
        err2 = [h * x for x in e]
    return StepResult(y1, f_new, err, err2, stages)


def dense_stages(fn: FlatFn, tab: ButcherTableau, t, y0: list, h, stages: list) -> list:
    """Append the extra dense-output stages (if the tableau has any)."""
    stages = list(stages)
    for j in range(tab.extra_stages):
        row = tab.extra_a[j, : len(stages)]
        yj = _axpy(y0, h, _combine(row, stages))
        stages.append(fn(t + float(tab.extra_c[j]) * h, yj))
    return stages


def dense_weights(tab: ButcherTableau, theta):
    """Weights ``w_i(theta)`` (``[M, len(tab.dense_rows)]``) of the used stages.

    Horner's scheme: products only (a pow op costs far more than a multiply).
    """
    dtype = theta.dtype
    coef = tab.dense[list(tab.dense_rows)]  # [rows, deg]: theta^1..theta^deg
    deg = coef.shape[1]
    # Row constants shaped [1, rows] on the NumPy side and expand_dims for theta:
    # slicing a tensor costs four graph ops (three constants), and tracing time
    # grows with the number of ops (this runs in every interpolation).
    th = tf.expand_dims(theta, 1)
    w = tf.constant(coef[None, :, deg - 1], dtype=dtype) * th
    for j in range(deg - 2, -1, -1):
        w = (w + tf.constant(coef[None, :, j], dtype=dtype)) * th
    return w
