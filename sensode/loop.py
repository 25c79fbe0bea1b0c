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
from .solution import Status
from .tableau import ButcherTableau

__all__ = ["IntegrateResult", "integrate"]


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


class IntegrateResult(NamedTuple):
    """What `integrate` returns (all tensors, nests as given)."""

    y1: object  # state at t1
    ys: object  # [T, ...] states at the save times (None when no save times)
    t: tf.Tensor  # time reached (t1 on success)
    stats: dict
    status: tf.Tensor


def _where(cond, a, b):
    return tf.nest.map_structure(lambda x, y: tf.where(cond, x, y), a, b)


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
            tf.where(tf.reshape(at_start, [-1] + [1] * y.shape.rank), y[None], tf.zeros_like(y[None]))
            * tf.ones(tf.concat([[n_save], tf.ones([y.shape.rank], tf.int32)], 0), dtype)
            for y in y0
        ]
        save_work = sum((y.shape.num_elements() or _SMALL_WORK) for y in y0) * (ts.shape[0] or _SMALL_WORK)
    else:
        ts = None
        saved = []

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
    )

    def cond(s: _State):  # loop_vars is the 1-tuple (state,)
        return tf.equal(s.status, Status.SUCCESS) & (direction * (t1 - s.t) > 0)

    def body(s: _State):
        remaining = t1 - s.t
        last = tf.abs(s.h) >= tf.abs(remaining)
        h = tf.where(last, remaining, s.h)
        step = rk.rk_step(flat_fn, tab, s.t, s.y, s.f, h)
        nfe = s.nfe + tab.stages
        t_new = tf.where(last, t1, s.t + h)
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

            def save():
                stages = rk.dense_stages(flat_fn, tab, s.t, s.y, h, step.stages)
                theta = tf.clip_by_value((ts - s.t) / h, 0.0, 1.0)
                interp = rk.dense_eval(tab, theta, s.y, h, stages)
                out = []
                for buf, val, y1 in zip(saved, interp, step.y1):
                    shape = [-1] + [1] * y1.shape.rank
                    val = tf.where(tf.reshape(tf.equal(ts, t_new), shape), y1[None], val)
                    out.append(tf.where(tf.reshape(in_step, shape), val, buf))
                return out, tf.constant(tab.extra_stages, tf.int32)

            def keep():
                return list(saved), tf.constant(0, tf.int32)

            # A conditional has a fixed cost that exceeds the interpolation of
            # a small state; it pays off with extra stages or large buffers.
            if tab.extra_stages or save_work > _SMALL_WORK:
                saved, extra_nfe = tf.cond(tf.reduce_any(in_step), save, keep)
            else:
                saved, extra_nfe = save()
            nfe = nfe + extra_nfe

        new = _State(
            t=t_new,
            y=step.y1,
            f=step.f_new,
            h=h_next,
            ratio_prev=ratio_prev,
            saved=saved,
            steps=s.steps + 1,
            accepted=s.accepted + 1,
            rejected=s.rejected,
            nfe=nfe,
            status=s.status,
        )
        old = s._replace(h=h_next, ratio_prev=ratio_prev, steps=s.steps + 1, rejected=s.rejected + 1, nfe=nfe)
        out = _where(accept, new, old)
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
    return IntegrateResult(
        y1=tf.nest.pack_sequence_as(structure, final.y),
        ys=ys,
        t=final.t,
        stats=stats,
        status=status,
    )
