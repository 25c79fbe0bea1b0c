"""The dense-output record of a solve, and its evaluation anywhere in the span.

A `Record` keeps, for every accepted step ``i``, its start time, signed size,
start state and the method's dense-output rows (``[dense_rows, *leaf]`` per
leaf, see `sensode.ode.methods`). Buffers have a static number of entries
(the loop bound) so that XLA can compile them; only the first ``count`` are
valid.
"""

from __future__ import annotations

import math

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["Record", "empty_record", "write_record", "finalize", "interpolate"]


class Record(NamedTuple):
    """Dense output of every accepted step, in fixed-size buffers.

    ``t`` ``[n + 1]`` (step boundaries), ``h`` ``[n]``, ``y[leaf]``
    ``[n, *leaf]`` and ``k[leaf]`` ``[n, rows, *leaf]``; ``count`` valid steps.
    """

    t: tf.Tensor
    h: tf.Tensor
    y: list
    k: list
    count: tf.Tensor
    # For records over `SEARCHSORTED_MAX` steps (see `finalize`): the start
    # time of every `_block(n)`-th step, signed, +max past ``count``; else ()
    # (an empty nest, which `tf.while_loop` can carry; None it cannot).
    coarse: tf.Tensor | tuple = ()


def empty_record(n: int, t0, y0: list, rows: int) -> Record:
    """Buffers for ``n`` steps, starting at ``t0`` (``y0`` gives leaf shapes)."""
    dtype = t0.dtype
    t = tf.tensor_scatter_nd_update(tf.zeros([n + 1], dtype), [[0]], t0[None])
    # tf.shape, not the static shape: a batch dimension may be unknown.
    ys = [tf.zeros(tf.concat([[n], tf.shape(y)], 0), dtype) for y in y0]
    ks = [tf.zeros(tf.concat([[n, rows], tf.shape(y)], 0), dtype) for y in y0]
    return Record(t, tf.zeros([n], dtype), ys, ks, tf.constant(0, tf.int32))


def write_record(rec: Record, idx, t_end, h, y: list, rows: list) -> Record:
    """Write step ``idx`` (start ``y``, size ``h``, ending at ``t_end``).

    The loop writes at index ``accepted`` on every attempt: a rejected attempt
    is overwritten by the next one, so the buffers never pass through the
    accept/reject select (which would copy them every step).
    """
    return Record(
        t=tf.tensor_scatter_nd_update(rec.t, [[idx + 1]], t_end[None]),
        h=tf.tensor_scatter_nd_update(rec.h, [[idx]], h[None]),
        y=[tf.tensor_scatter_nd_update(b, [[idx]], v[None]) for b, v in zip(rec.y, y)],
        k=[tf.tensor_scatter_nd_update(b, [[idx]], r[None]) for b, r in zip(rec.k, rows)],
        count=rec.count,
    )


# Up to this many recorded steps one vectorised comparison (`tf.searchsorted`
# over the step start times) is the cheapest lookup. Above it the lookup is
# two-level (`finalize`, `_step_index`), comparing against ~2 sqrt(n) entries
# instead of n: `tf.searchsorted` compares against the whole buffer under XLA
# (+13 µs per lookup at 10,000 entries, +72 µs at 100,000), and an unrolled
# binary search of sequential gathers was slower still inside the backward
# loop (measured: interpolating adjoint of Lotka--Volterra 3.6 ms against
# 2.4 ms with searchsorted at 2,000 entries).
SEARCHSORTED_MAX = 4096


def _block(n: int) -> int:
    return max(1, math.isqrt(n - 1) + 1)


def finalize(rec: Record, count, direction) -> Record:
    """The record of a finished solve: ``count`` valid steps, and its coarse index.

    Computed once per solve (not per lookup): the signed start time of every
    ``ceil(sqrt(n))``-th step, so that a lookup compares against ``sqrt(n)``
    coarse entries and then ``sqrt(n)`` steps of one block.
    """
    n = rec.h.shape[0]
    if n <= SEARCHSORTED_MAX:
        return rec._replace(count=count)
    block = _block(n)
    starts = direction * rec.t[:-1:block]
    big = tf.constant(np.finfo(rec.t.dtype.as_numpy_dtype).max, rec.t.dtype)
    first = tf.range(tf.shape(starts)[0]) * block
    return rec._replace(count=count, coarse=tf.where(first < count, starts, big))


def _step_index(rec: Record, t, direction):
    """Index of the recorded step containing each ``t``.

    ``searchsorted(direction * starts, direction * t, 'right') - 1`` over the
    ``count`` valid step starts; two-level above `SEARCHSORTED_MAX` steps.
    """
    n = rec.h.shape[0]
    big = tf.constant(np.finfo(rec.t.dtype.as_numpy_dtype).max, rec.t.dtype)
    key = direction * t
    if not tf.is_tensor(rec.coarse):
        starts = tf.where(tf.range(n) < rec.count, direction * rec.t[:-1], big)
        return _searchsorted_right(starts, key) - 1
    block = _block(n)
    j = tf.maximum(_searchsorted_right(rec.coarse, key) - 1, 0)  # [M] block of each t
    idx = tf.expand_dims(j * block, 1) + tf.constant(np.arange(block, dtype=np.int32)[None])  # [M, block] its steps
    win = tf.where(idx < rec.count, direction * tf.gather(rec.t, tf.minimum(idx, n - 1)), big)
    return j * block + tf.reduce_sum(tf.cast(win <= tf.expand_dims(key, 1), tf.int32), axis=1) - 1


def _searchsorted_right(sorted_values, values):
    """``tf.searchsorted(sorted_values, values, side="right")`` for 1-D tensors.

    The raw op on ``[1, n]`` and ``[1, M]``: `tf.searchsorted` adds the shape
    bookkeeping of arbitrary batch dimensions (about twenty graph ops per call,
    and this runs in every dense-output lookup).
    """
    out = tf.raw_ops.UpperBound(sorted_inputs=tf.expand_dims(sorted_values, 0), values=tf.expand_dims(values, 0),
                                out_type=tf.int32)
    return tf.squeeze(out, 0)


def interpolate(method, rec: Record, t, direction, extrapolate: bool = False) -> list:
    """Evaluate a `Record` at times ``t`` (``[M]``) inside the recorded span.

    Returns a flat list of ``[M, *leaf]`` tensors. Each time picks the
    accepted step that contains it (binary search over the step start times).

    A time outside the span reads the end point's state, or, with
    ``extrapolate``, the polynomial of the first or last step continued
    beyond it, up to ``eps^(-1/6)`` of that step (405 in float64, 14 in
    float32: rounding in the stored rows grows like ``eps theta^degree``).
    The continuous adjoints need it: a stage may lie outside its step
    (Kvaerno5's third, at ``t + 1.23 h``), so on the backward solve's last
    step it lies beyond ``t0``, and a state frozen there is an O(h) error
    that no tolerance removes.
    """
    n = tf.maximum(rec.count, 1)
    idx = tf.clip_by_value(_step_index(rec, t, direction), 0, n - 1)
    t_i = tf.gather(rec.t, idx)
    h_i = tf.gather(rec.h, idx)
    reach = float(np.finfo(rec.t.dtype.as_numpy_dtype).eps) ** (-1.0 / 6.0) if extrapolate else 0.0
    lo, hi = -reach, 1.0 + reach
    theta = tf.clip_by_value((t - t_i) / h_i, lo, hi)
    y_i = [tf.gather(b, idx) for b in rec.y]
    k_i = [tf.gather(b, idx) for b in rec.k]
    return method.interpolate(theta, y_i, h_i, k_i)
