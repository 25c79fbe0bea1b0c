"""Checkpointing: the one segmented forward solve and the one backward sweep.

With ``checkpoints=k`` the span is cut at ``k - 1`` interior times. The
forward pass keeps only the states at the cuts (and the step size each
segment starts with); the backward pass re-solves one segment at a time,
from the last to the first, and chains the adjoint across the cuts. Memory
then holds one segment's steps instead of all of them.

Both the discrete adjoint and the interpolating adjoint use this module;
they differ only in what they do with a re-solved segment (``segment_fn``).

For fixed-step methods the cuts lie on the ``dt`` grid, so the segmented
solve takes exactly the steps of the unsegmented one: a sensitivity
algorithm must never change the computed solution. Adaptive methods land on
the cuts (carrying the step size across, so a cut costs one evaluation, not
a restart).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from .base import Spec

__all__ = ["check_checkpoints", "first_status", "Checkpoints", "segment_cuts", "segment_cap", "solve_segment", "segmented_forward", "backward_sweep"]


def check_checkpoints(checkpoints):
    """Validate a ``checkpoints`` option: None or a positive int."""
    if checkpoints is not None and (isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1):
        raise ValueError(f"`checkpoints` must be None or a positive int, got {checkpoints!r}")


class Checkpoints(NamedTuple):
    """What the segmented forward pass keeps."""

    u: tf.Tensor  # [T, *u0.shape] saved states
    stats: dict
    status: tf.Tensor
    cuts: tf.Tensor  # [k + 1] segment boundaries
    states: tf.Tensor  # [k + 1, *u0.shape] states at the cuts
    steps: tf.Tensor  # [k + 1] first step of each segment (entry 0: 0 when automatic)


def segment_cuts(spec: Spec, t0, t1, k: int):
    """Cut times ``t0 = c_0, ..., c_k = t1`` (exact end points).

    Equally spaced for adaptive methods; on the ``dt`` grid for fixed-step
    methods (cut ``i`` at ``t0 + floor(i N / k) dt`` with ``N`` the number
    of steps), so that the segments take the steps of the whole solve.
    """
    dtype = t0.dtype
    frac = tf.linspace(tf.constant(0.0, dtype), tf.constant(1.0, dtype), k + 1)
    if spec.method.adaptive or spec.options.dt is None:
        cuts = t0 + (t1 - t0) * frac
    else:
        dt = tf.abs(tf.cast(spec.options.dt, dtype))
        direction = tf.sign(t1 - t0)
        n_steps = tf.math.ceil(tf.abs(t1 - t0) / dt)
        cuts = t0 + direction * dt * tf.floor(frac * n_steps)
    return tf.tensor_scatter_nd_update(cuts, [[0], [k]], tf.stack([t0, t1]))


def segment_cap(spec: Spec, k: int) -> int:
    """Step budget of one of ``k`` checkpointed segments: ``2 ceil(max_steps / k)``.

    Under XLA every buffer is sized by its loop bound, so this, not the actual
    step count, is what a segment's re-solve stores; a segment that needs more
    steps fails with `Status.MAX_STEPS` (raise ``max_steps`` then).
    """
    max_steps = spec.options.max_steps
    return min(max_steps, 2 * -(-max_steps // k))


def solve_segment(spec: Spec, u_start, h_start, c0, c1, ts, p, **kwargs):
    """Solve on ``[c0, c1]``, saving at the save times inside ``(c0, c1]``.

    Returns ``(result, inside)``; rows of ``result.ys`` outside the segment
    (``inside`` False) are meaningless.
    """
    direction = tf.where(c1 >= c0, tf.constant(1.0, c0.dtype), tf.constant(-1.0, c0.dtype))
    inside = (direction * (ts - c0) > 0) & (direction * (ts - c1) <= 0)
    ts_seg = tf.where(inside, ts, c1)  # outside times clamp to the end; masked later
    res = spec.integrate(spec.rhs(p), u_start, c0, c1, saveat=ts_seg, dt=h_start, **kwargs)
    return res, inside


def first_status(status, new):
    return tf.where(tf.equal(status, 0), new, status)


def segmented_forward(spec: Spec, u0, ts, t0, t1, p, k: int) -> Checkpoints:
    """Forward solve in ``k`` segments, keeping the states at the cuts.

    Segments ``1..k-1`` run in one `tf.while_loop` (one copy in the graph,
    whatever ``k``); the first is peeled off because its first step may be
    chosen automatically.
    """
    cuts = segment_cuts(spec, t0, t1, k)
    rank = u0.shape.rank
    cap = segment_cap(spec, k)
    dtype = u0.dtype
    at_start = tf.reshape(tf.cast(tf.equal(ts, t0), dtype), [-1] + [1] * rank)
    u_saved = tf.zeros(tf.concat([tf.shape(ts), tf.shape(u0)], 0), dtype) + at_start * u0[None]

    def merge(u_saved, res, inside):
        return tf.where(tf.reshape(inside, [-1] + [1] * rank), res.ys, u_saved)

    dt = spec.options.dt
    res, inside = solve_segment(spec, u0, dt, cuts[0], cuts[1], ts, p, max_steps=cap)
    u_saved = merge(u_saved, res, inside)
    states = tf.tensor_scatter_nd_update(tf.zeros(tf.concat([[k + 1], tf.shape(u0)], 0), dtype), [[0], [1]],
                                         tf.stack([u0, res.y1]))
    h0 = tf.zeros([], dtype) if dt is None else tf.abs(tf.cast(dt, dtype))
    hs = tf.tensor_scatter_nd_update(tf.zeros([k + 1], dtype), [[0], [1]], tf.stack([h0, tf.abs(res.h)]))
    keys = tuple(res.stats)

    def body(i, u_saved, states, hs, stats, status):
        # gather, not a slice: under tf.vectorized_map i may differ per sample.
        start, h, cut0, cut1 = (tf.gather(x, j) for x, j in ((states, i), (hs, i), (cuts, i), (cuts, i + 1)))
        res, inside = solve_segment(spec, start, h, cut0, cut1, ts, p, max_steps=cap)
        states = tf.tensor_scatter_nd_update(states, [[i + 1]], res.y1[None])
        hs = tf.tensor_scatter_nd_update(hs, [[i + 1]], tf.abs(res.h)[None])
        stats = tuple(a + res.stats[key] for a, key in zip(stats, keys))
        return i + 1, merge(u_saved, res, inside), states, hs, stats, first_status(status, res.status)

    _, u_saved, states, hs, stats, status = tf.while_loop(
        lambda i, *_: i < k,
        body,
        (tf.constant(1, tf.int32), u_saved, states, hs, tuple(res.stats[key] for key in keys), res.status),
        maximum_iterations=max(k - 1, 1),
    )
    # A failed segment's unreached save points and end state are NaN (see
    # `integrate`), and the segments after it start from NaN: nothing is 0.
    return Checkpoints(u_saved, dict(zip(keys, stats)), status, cuts, tf.stop_gradient(states), tf.stop_gradient(hs))


def backward_sweep(k: int, segment_fn, a0, acc0):
    """Chain ``segment_fn`` over the segments ``k-1, ..., 0``.

    ``segment_fn(i, a, acc, first) -> (a, acc, status)`` re-solves segment
    ``i`` and pulls the adjoint ``a`` (``dL/du`` at the segment's end) back to
    its start, adding to the accumulated parameter gradients ``acc``.
    Segments ``k-1..1`` run in one loop; segment 0 (whose first step may be
    automatic, ``first=True``) is peeled. Returns ``(a, acc, status)``.
    """

    def body(i, a, acc, status):
        a, acc, st = segment_fn(i, a, acc, False)
        return i - 1, a, acc, first_status(status, st)

    _, a, acc, status = tf.while_loop(
        lambda i, *_: i > 0,
        body,
        (tf.constant(k - 1, tf.int32), a0, acc0, tf.constant(0, tf.int32)),
        maximum_iterations=max(k - 1, 1),
    )
    a, acc, st = segment_fn(0, a, acc, True)
    return a, acc, first_status(status, st)
