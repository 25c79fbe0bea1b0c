"""The one stepping loop: adaptive or fixed steps in `tf.while_loop`.

Forward solves, forward-sensitivity solves and backward adjoint solves all run
through `integrate`: a sensitivity method changes the right-hand side and the
state it integrates, never the loop.

The loop is written for XLA: a static ``max_steps`` bound
(``maximum_iterations``, which also makes it differentiable under XLA), a
fixed-size save buffer, and accept/reject as one `tf.where` over the typed
loop state. Nothing branches in Python on a tensor value.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from . import rk
from .control import PIController, error_ratio, initial_step
from ..solution import Status
from .tableaus import ButcherTableau

__all__ = ["IntegrateResult", "Record", "integrate", "interpolate"]


# Problems below this many interpolated numbers per step are "small".
_SMALL_WORK = 65536


class _State(NamedTuple):
    t: tf.Tensor  # current time
    y: list  # flat state at t
    f: list  # fn(t, y), the next step's first stage
    h: tf.Tensor  # signed step to try next
    ratio_prev: tf.Tensor  # error ratio of the last accepted step (PI memory)
    saved: list  # [T, *leaf] buffers
    steps: tf.Tensor
    accepted: tf.Tensor
    rejected: tf.Tensor
    nfe: tf.Tensor
    status: tf.Tensor
    stop: tf.Tensor  # index of the next stop time (tstops)
    rec: list  # dense-output record buffers (written in place, never selected)


class Record(NamedTuple):
    """Dense output of every accepted step, in fixed-size buffers.

    ``t[i]``, ``h[i]``, ``y[leaf][i]`` and ``k[leaf][i]`` (``[n_rows, *leaf]``,
    the stages the dense output uses) describe accepted step ``i``; only the
    first ``count`` entries are valid. `interpolate` evaluates it anywhere.
    """

    t: tf.Tensor
    h: tf.Tensor
    y: list
    k: list
    count: tf.Tensor


class IntegrateResult(NamedTuple):
    """What `integrate` returns (all tensors, nests as given)."""

    y1: object  # state at t1
    ys: object  # [T, ...] states at the save times (None when no save times)
    t: tf.Tensor  # time reached (t1 on success)
    stats: dict
    status: tf.Tensor
    h: tf.Tensor  # the step the controller would try next
    record: Record | None  # with ``record=True``


def _where(cond, a, b):
    return tf.nest.map_structure(lambda x, y: tf.where(cond, x, y), a, b)


def _at_time(y, f, ts, t):
    """``y`` (the state at ``t``) as the saved value at the times ``ts == t``.

    ``y + (ts - t) f`` is ``y`` in value, but its derivative follows the flow:
    ``f`` with respect to the save time and ``dy/dt - f`` with respect to the
    time ``t`` the solver reached (for the last step, ``t1``), so that moving
    the end of integration does not move a state saved at a fixed time, and
    ``saveat=None`` (``ts = [t0, t1]``) counts each dependence once.
    """
    shift = tf.reshape(ts - t, [-1] + [1] * y.shape.rank)
    return y[None] + shift * f[None]


def _all_finite(xs):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in xs])


def integrate(
    fn: Callable,
    y0,
    t0,
    t1,
    *,
    tableau: ButcherTableau,
    saveat=None,
    dt=None,
    rtol=None,
    atol=None,
    controller: PIController | None = None,
    max_steps: int = 10000,
    dtmin=None,
    dtmax=None,
    include_in_norm=None,
    stop_controller_gradients: bool = True,
    tstops=None,
    jump: Callable | None = None,
    record: bool = False,
) -> IntegrateResult:
    """Integrate ``dy/dt = fn(t, y)`` from ``t0`` to ``t1``.

    Args:
      fn: ``fn(t, y) -> dy/dt`` on nests shaped like ``y0``.
      y0: a tensor or a nest of tensors, all of one floating dtype.
      t0, t1: scalar tensors of that dtype. ``t1 < t0`` integrates backwards.
      tableau: the method.
      saveat: ``None`` or a ``[T]`` tensor of times, monotone in the direction
        of integration, inside ``[t0, t1]``. Values come from the dense output.
      dt: fixed step (required for fixed-step tableaus), or the first step of
        an adaptive method (``None``: automatic).
      rtol, atol: tolerances (scalars, or tensors broadcastable to the leaves).
      controller: step-size controller (`PIController()` by default).
      max_steps: static bound on attempted steps.
      dtmin, dtmax: bounds on the step size magnitude.
      include_in_norm: optional nest of Python booleans like ``y0``; leaves
        marked False do not take part in step-size control (seminorm).
      stop_controller_gradients: stop gradients through the step-size
        selection. Step sizes are then piecewise constant in the inputs, which
        is what both finite differences (for small perturbations) and the
        discrete adjoint see, except for the final step that lands on ``t1``.
      tstops: optional ``[K]`` times, monotone in the direction of
        integration: steps land on them exactly and keep the controller's step
        size (no restart). Stops at or behind ``t0``, and beyond ``t1``, are
        ignored; a stop at ``t1`` is honoured.
      jump: ``jump(t, y) -> y`` applied once per distinct stop time (it must
        handle repeated stop times itself, e.g. by summing over them); the
        derivative is re-evaluated after it.
      record: keep the dense output of every accepted step (`Record`), in
        buffers of ``max_steps`` entries; memory grows with ``max_steps``.

    Returns:
      `IntegrateResult`.
    """
    structure = y0
    y0 = tf.nest.flatten(y0)
    dtype = y0[0].dtype
    include = None if include_in_norm is None else tf.nest.flatten(include_in_norm)
    controller = controller or PIController()
    tab = tableau

    def flat_fn(t, y):
        return tf.nest.flatten(fn(t, tf.nest.pack_sequence_as(structure, y)))

    t0 = tf.convert_to_tensor(t0, dtype)
    t1 = tf.convert_to_tensor(t1, dtype)
    span = tf.abs(t1 - t0)
    direction = tf.where(t1 >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype))
    eps = tf.constant(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).eps, dtype)
    rtol = tf.constant(0.0, dtype) if rtol is None else tf.cast(rtol, dtype)
    atol = tf.constant(0.0, dtype) if atol is None else tf.cast(atol, dtype)
    dtmin_user = tf.constant(0.0, dtype) if dtmin is None else tf.cast(dtmin, dtype)
    dtmax_v = span if dtmax is None else tf.minimum(tf.cast(dtmax, dtype), span)

    f0 = flat_fn(t0, y0)
    nfe = tf.constant(1, tf.int32)
    if dt is not None:
        h_abs = tf.abs(tf.cast(dt, dtype))
    elif tab.adaptive:
        h_abs = initial_step(flat_fn, t0, y0, f0, direction, tab.error_order, rtol, atol, span)
        h_abs = tf.stop_gradient(h_abs)
        nfe += 1
    else:  # guarded by the entry points; keep a clear message for direct callers
        raise ValueError(f"fixed-step method {tab.name} needs `dt`")
    h_abs = tf.minimum(h_abs, dtmax_v)

    has_save = saveat is not None
    if has_save:
        ts = tf.cast(saveat, dtype)
        n_save = tf.shape(ts)[0]
        at_start = tf.equal(ts, t0)
        saved = [
            tf.where(tf.reshape(at_start, [-1] + [1] * y.shape.rank), _at_time(y, f, ts, t0), tf.zeros_like(y[None]))
            * tf.ones(tf.concat([[n_save], tf.ones([y.shape.rank], tf.int32)], 0), dtype)
            for y, f in zip(y0, f0)
        ]
        save_work = sum((y.shape.num_elements() or _SMALL_WORK) for y in y0) * (ts.shape[0] or _SMALL_WORK)
    else:
        ts = None
        saved = []

    has_stops = tstops is not None
    if has_stops:
        tstops = tf.cast(tstops, dtype)
        n_stops = tf.shape(tstops)[0]
    rec = []
    if record:
        rows = tab.dense_rows
        rec = [tf.zeros([max_steps + 1], dtype), tf.zeros([max_steps], dtype)]
        # tf.shape, not the static shape: a batch dimension may be unknown.
        rec += [tf.zeros(tf.concat([[max_steps], tf.shape(y)], 0), dtype) for y in y0]
        rec += [tf.zeros(tf.concat([[max_steps, len(rows)], tf.shape(y)], 0), dtype) for y in y0]
        rec[0] = tf.tensor_scatter_nd_update(rec[0], [[0]], t0[None])

    init_status = tf.where(_all_finite(y0) & _all_finite(f0), Status.SUCCESS, Status.NONFINITE)
    state = _State(
        t=t0,
        y=y0,
        f=f0,
        h=direction * h_abs,
        ratio_prev=tf.constant(1.0, dtype),
        saved=saved,
        steps=tf.constant(0, tf.int32),
        accepted=tf.constant(0, tf.int32),
        rejected=tf.constant(0, tf.int32),
        nfe=nfe,
        status=tf.cast(init_status, tf.int32),
        # Stops at or behind the start are not "ahead": skip them.
        stop=tf.reduce_sum(tf.cast(direction * (tstops - t0) <= 0, tf.int32)) if has_stops else tf.constant(0, tf.int32),
        rec=rec,
    )

    def cond(s: _State):  # loop_vars is the 1-tuple (state,)
        return tf.equal(s.status, Status.SUCCESS) & (direction * (t1 - s.t) > 0)

    def body(s: _State):
        if has_stops:
            next_stop = tf.gather(tstops, tf.minimum(s.stop, n_stops - 1))
            # Stops beyond t1 are not this solve's business.
            stop_left = (s.stop < n_stops) & (direction * (next_stop - t1) <= 0)
            target = tf.where(stop_left, next_stop, t1)
        else:
            target = t1
        remaining = target - s.t
        # A remainder of a few ulps (e.g. ten steps of 0.1 summing to
        # 0.9999999999999999) is folded into this step, not left as a sliver.
        slack = 64.0 * eps * tf.maximum(tf.abs(s.t), tf.abs(target))
        last = tf.abs(s.h) + slack >= tf.abs(remaining)
        h = tf.where(last, remaining, s.h)
        step = rk.rk_step(flat_fn, tab, s.t, s.y, s.f, h)
        nfe = s.nfe + tab.stages
        t_new = tf.where(last, target, s.t + h)
        finite = _all_finite(step.y1)
        if tab.adaptive:
            ratio = error_ratio(step.err, s.y, step.y1, rtol, atol, step.err_secondary, include)
            if stop_controller_gradients:
                ratio = tf.stop_gradient(ratio)
            finite = finite & tf.math.is_finite(ratio)
            accept = (ratio <= 1.0) & finite
            factor = controller.factor(tf.where(finite, ratio, tf.ones_like(ratio)), s.ratio_prev, accept, tab.error_order)
            factor = tf.where(finite, factor, tf.constant(controller.factor_min, dtype))
            h_next = s.h * factor  # grow from the proposed step, not the clipped one
            h_next = direction * tf.minimum(tf.abs(h_next), dtmax_v)
            ratio_prev = tf.where(accept, ratio, s.ratio_prev)
        else:
            accept = finite
            h_next = s.h
            ratio_prev = s.ratio_prev

        saved = s.saved
        if has_save:
            lo = direction * (ts - s.t)
            hi = direction * (ts - t_new)
            in_step = (lo > 0) & (hi <= 0) & accept

            at_end = in_step & tf.equal(ts, t_new)
            interior = in_step & ~at_end

            def save():
                stages = rk.dense_stages(flat_fn, tab, s.t, s.y, h, step.stages)
                theta = tf.clip_by_value((ts - s.t) / h, 0.0, 1.0)
                interp = rk.dense_eval(tab, theta, s.y, h, stages)
                out = []
                for buf, val in zip(saved, interp):
                    out.append(tf.where(tf.reshape(interior, [-1] + [1] * (buf.shape.rank - 1)), val, buf))
                return out, tf.constant(tab.extra_stages, tf.int32)

            def keep():
                return list(saved), tf.constant(0, tf.int32)

            # A conditional has a fixed cost that exceeds the interpolation of
            # a small state; it pays off with extra stages or large buffers.
            if tab.extra_stages or save_work > _SMALL_WORK:
                saved, extra_nfe = tf.cond(tf.reduce_any(interior), save, keep)
            else:
                saved, extra_nfe = save()
            # A save time on the step's end takes the step's own value.
            saved = [
                tf.where(tf.reshape(at_end, [-1] + [1] * y1.shape.rank), _at_time(y1, f1, ts, t_new), buf)
                for buf, y1, f1 in zip(saved, step.y1, step.f_new)
            ]
            nfe = nfe + extra_nfe

        y_new, f_new, stop = step.y1, step.f_new, s.stop
        if has_stops:
            landed = accept & last & stop_left

            def do_jump():
                yj = tf.nest.flatten(jump(t_new, tf.nest.pack_sequence_as(structure, step.y1)))
                return yj, flat_fn(t_new, yj), tf.constant(1, tf.int32)

            def no_jump():
                return list(step.y1), list(step.f_new), tf.constant(0, tf.int32)

            y_new, f_new, jump_nfe = tf.cond(landed, do_jump, no_jump)
            nfe = nfe + jump_nfe
            count = tf.reduce_sum(tf.cast(tf.equal(tstops, t_new), tf.int32))
            stop = tf.where(landed, s.stop + tf.maximum(count, 1), s.stop)

        rec = s.rec
        if record:
            # Written at index `accepted` on every attempt: a rejected attempt
            # is overwritten by the next one, so the buffers never go through
            # the accept/reject select (which would copy them every step).
            idx = s.accepted
            if tab.extra_stages:
                all_stages, extra_nfe2 = tf.cond(
                    accept,
                    lambda: (rk.dense_stages(flat_fn, tab, s.t, s.y, h, step.stages), tf.constant(tab.extra_stages, tf.int32)),
                    lambda: (step.stages + [step.stages[0]] * tab.extra_stages, tf.constant(0, tf.int32)),
                )
                nfe = nfe + extra_nfe2
            else:
                all_stages = step.stages
            n_leaf = len(s.y)
            r_t = tf.tensor_scatter_nd_update(rec[0], [[idx + 1]], t_new[None])
            r_h = tf.tensor_scatter_nd_update(rec[1], [[idx]], h[None])
            r_y = [tf.tensor_scatter_nd_update(b, [[idx]], y[None]) for b, y in zip(rec[2 : 2 + n_leaf], s.y)]
            r_k = [
                tf.tensor_scatter_nd_update(b, [[idx]], tf.stack([all_stages[i][leaf] for i in tab.dense_rows])[None])
                for leaf, b in enumerate(rec[2 + n_leaf :])
            ]
            rec = [r_t, r_h] + r_y + r_k

        new = _State(
            t=t_new,
            y=y_new,
            f=f_new,
            h=h_next,
            ratio_prev=ratio_prev,
            saved=saved,
            steps=s.steps + 1,
            accepted=s.accepted + 1,
            rejected=s.rejected,
            nfe=nfe,
            status=s.status,
            stop=stop,
            rec=[],
        )
        old = s._replace(h=h_next, ratio_prev=ratio_prev, steps=s.steps + 1, rejected=s.rejected + 1, nfe=nfe, rec=[])
        out = _where(accept, new, old)._replace(rec=rec)
        # Failure: the step cannot shrink further, or a fixed step gave NaN/Inf.
        floor = tf.maximum(dtmin_user, 8.0 * eps * tf.maximum(tf.abs(out.t), tf.abs(t1)))
        reached = tf.equal(out.t, t1)
        too_small = (~reached) & (tf.abs(out.h) < floor)
        if tab.adaptive:
            status = tf.where(too_small, tf.where(finite, Status.DT_MIN, Status.NONFINITE), Status.SUCCESS)
        else:
            status = tf.where(finite, Status.SUCCESS, Status.NONFINITE)
        return (out._replace(status=tf.cast(status, tf.int32)),)

    final = tf.while_loop(cond, body, (state,), maximum_iterations=max_steps)[0]
    unfinished = tf.equal(final.status, Status.SUCCESS) & (direction * (t1 - final.t) > 0)
    status = tf.where(unfinished, tf.constant(Status.MAX_STEPS, tf.int32), final.status)
    stats = {
        "nfe": final.nfe,
        "steps": final.steps,
        "accepted": final.accepted,
        "rejected": final.rejected,
    }
    ys = tf.nest.pack_sequence_as(structure, final.saved) if has_save else None
    rec_out = None
    if record:
        n_leaf = len(y0)
        r = final.rec
        rec_out = Record(t=r[0], h=r[1], y=r[2 : 2 + n_leaf], k=r[2 + n_leaf :], count=final.accepted)
    return IntegrateResult(
        y1=tf.nest.pack_sequence_as(structure, final.y),
        ys=ys,
        t=final.t,
        stats=stats,
        status=status,
        h=final.h,
        record=rec_out,
    )


def interpolate(tab: ButcherTableau, rec: Record, t, direction):
    """Evaluate a `Record` at times ``t`` (``[M]``) inside the recorded span.

    Returns a flat list of ``[M, *leaf]`` tensors. Each time picks the
    accepted step that contains it (binary search over the step start times).
    """
    dtype = rec.h.dtype
    n = tf.maximum(rec.count, 1)
    starts = direction * rec.t[:-1]  # increasing in the integration direction
    valid = tf.range(tf.shape(starts)[0]) < rec.count
    big = tf.constant(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).max, dtype)
    starts = tf.where(valid, starts, big)
    idx = tf.searchsorted(starts, direction * t, side="right") - 1
    idx = tf.clip_by_value(idx, 0, n - 1)
    t_i = tf.gather(rec.t, idx)
    h_i = tf.gather(rec.h, idx)
    theta = tf.clip_by_value((t - t_i) / h_i, 0.0, 1.0)
    out = []
    for y_buf, k_buf in zip(rec.y, rec.k):
        y_i = tf.gather(y_buf, idx)  # [M, *leaf]
        k_i = tf.gather(k_buf, idx)  # [M, rows, *leaf]
        w = rk.dense_weights(tab, theta)  # [M, rows]
        w = tf.reshape(w, w.shape.concatenate([1] * (k_i.shape.rank - 2)))
        h_b = tf.reshape(h_i, [-1] + [1] * (y_i.shape.rank - 1))
        out.append(y_i + h_b * tf.reduce_sum(w * k_i, axis=1))
    return out
