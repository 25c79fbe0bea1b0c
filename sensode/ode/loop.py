"""The one stepping loop: adaptive or fixed steps in `tf.while_loop`.

Forward solves, forward-sensitivity solves and backward adjoint solves all run
through `integrate`, with any method of the protocol in
`sensode.ode.methods`: a sensitivity algorithm changes the right-hand side
and the state it integrates, a method changes how one step is taken, never
the loop.

The loop is written for XLA: a static ``max_steps`` bound
(``maximum_iterations``, which also makes it differentiable under XLA), a
fixed-size save buffer, and accept/reject as one `tf.where` over the typed
loop state. Nothing branches in Python on a tensor value. One iteration is
`_body`: propose a step (`_propose`), let the method take it, judge it
(`_control`), write save points (`_save`), apply a jump at a stop time
(`_jump`), record the dense output (`_record`), then select.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import tensorflow as tf

from ..solution import Status
from ..validation import to_dtype
from . import dense as _dense
from .control import PIController, SolveOptions, initial_step
from .linear import SensitivitySystem, WithJacobian
from .methods import SMALL_WORK, ODEMethod

__all__ = ["IntegrateResult", "integrate", "Stepper", "Checkpoint", "nan_gradient_if"]


class IntegrateResult(NamedTuple):
    """What `integrate` returns (all tensors, nests as given).

    On failure (``status != 0``) ``y1`` and the save points the solve did not
    reach are NaN, and gradients through ``ys`` and ``y1`` are NaN.
    """

    y1: object  # state at t1
    ys: object  # [T, ...] states at the save times (None when no save times)
    t: tf.Tensor  # time reached (t1 on success)
    stats: dict
    status: tf.Tensor
    h: tf.Tensor  # the step the controller would try next
    record: _dense.Record | None  # with ``record=True``


class _State(NamedTuple):
    t: tf.Tensor  # current time
    y: list  # flat state at t
    f: list  # fn(t, y), the next step's first stage
    h: tf.Tensor  # signed step to try next
    ratio_prev: tf.Tensor  # error ratio of the last accepted step (PI memory)
    carry: Any  # the method's own loop state
    saved: list  # [T, *leaf] buffers
    steps: tf.Tensor
    accepted: tf.Tensor
    rejected: tf.Tensor
    nfe: tf.Tensor
    status: tf.Tensor
    stop: tf.Tensor  # index of the next stop time (tstops)
    rec: Any  # dense-output `Record` (written in place, never selected) or ()


class _Ctx(NamedTuple):
    """Everything fixed during one solve."""

    fn: Callable  # flat fn(t, y) -> list
    structure: Any  # the nest structure of y0 (for `jump`)
    method: ODEMethod
    t1: tf.Tensor
    direction: tf.Tensor
    eps: tf.Tensor
    rtol: tf.Tensor
    atol: tf.Tensor
    dtmin: tf.Tensor
    dtmax: tf.Tensor
    controller: PIController
    include: list | None
    stop_grads: bool
    ts: tf.Tensor | None
    save_work: int
    tstops: tf.Tensor | None
    jump: Callable | None
    record: bool


def _where(cond, a, b):
    return tf.nest.map_structure(lambda x, y: tf.where(cond, x, y), a, b)


def _rows_mask(mask, leaf_rank):
    return tf.reshape(mask, [-1] + [1] * leaf_rank)


def _at_time(y, f, ts, t):
    """``y`` (the state at ``t``) as the saved value at the times ``ts == t``.

    ``y + (ts - t) f`` is ``y`` in value, but its derivative follows the flow:
    ``f`` with respect to the save time and ``dy/dt - f`` with respect to the
    time ``t`` the solver reached (for the last step, ``t1``), so that moving
    the end of integration does not move a state saved at a fixed time, and
    ``saveat=None`` (``ts = [t0, t1]``) counts each dependence once.
    """
    return y[None] + _rows_mask(ts - t, y.shape.rank) * f[None]


def _all_finite(xs):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in xs])


@tf.custom_gradient
def _nan_gradient(failed, x):
    def grad(g):
        return None, tf.where(failed, tf.constant(np.nan, g.dtype), g)

    return tf.identity(x), grad


def nan_gradient_if(failed, x):
    """``x`` unchanged, but every gradient through it is NaN where ``failed``.

    The value of a failed solve must not pass on a finite gradient: the
    discrete adjoint (reverse mode through the loop) would otherwise
    differentiate the part it reached and return a plausible number. The
    gradient is NaN whatever arrives from above, a zero included (a loss
    that masks NaN values out still gets a NaN gradient). Mark values NaN by
    *adding* a NaN-or-zero term, not with `tf.where`, whose gradient would
    route zeros around this.
    """
    return tf.nest.map_structure(lambda v: _nan_gradient(failed, v), x)


def integrate(
    fn: Callable,
    y0,
    t0,
    t1,
    method: ODEMethod,
    options: SolveOptions | None = None,
    *,
    saveat=None,
    tstops=None,
    jump: Callable | None = None,
    include_in_norm=None,
    record: bool = False,
    stop_controller_gradients: bool = True,
) -> IntegrateResult:
    """Integrate ``dy/dt = fn(t, y)`` from ``t0`` to ``t1``.

    Args:
      fn: ``fn(t, y) -> dy/dt`` on nests shaped like ``y0``.
      y0: a tensor or a nest of tensors, all of one floating dtype.
      t0, t1: scalar tensors of that dtype. ``t1 < t0`` integrates backwards.
      method: an `ODEMethod` (e.g. `sensode.Tsit5()`).
      options: `SolveOptions` (tolerances, ``dt``, ``max_steps``, bounds,
        controller).
      saveat: ``None`` or a ``[T]`` tensor of times, monotone in the direction
        of integration, inside ``[t0, t1]``. Values come from the dense output.
      tstops: optional ``[K]`` times, monotone in the direction of
        integration: steps land on them exactly and keep the controller's step
        size (no restart). Stops at or behind ``t0``, and beyond ``t1``, are
        ignored; a stop at ``t1`` is honoured.
      jump: ``jump(t, y) -> y`` applied once per distinct stop time (it must
        handle repeated stop times itself, e.g. by summing over them); the
        derivative is re-evaluated after it.
      include_in_norm: optional nest of Python booleans like ``y0``; leaves
        marked False do not take part in step-size control (seminorm).
      record: keep the dense output of every accepted step (`Record`), in
        buffers of ``max_steps`` entries.
      stop_controller_gradients: stop gradients through the step-size
        selection. Step sizes are then piecewise constant in the inputs, which
        is what both finite differences (for small perturbations) and the
        discrete adjoint see, except for the final step that lands on ``t1``.

    Returns:
      `IntegrateResult`.
    """
    stepper = Stepper(fn, y0, t0, t1, method, options, saveat=saveat, tstops=tstops, jump=jump,
                      include_in_norm=include_in_norm, record=record,
                      stop_controller_gradients=stop_controller_gradients)
    return stepper.finish(stepper.run(stepper.start(y0), stepper.max_steps))


class Stepper:
    """The loop in pieces: `start`, `run` (at most ``n`` iterations), `finish`.

    `integrate` is ``finish(run(start(y0), max_steps))``. Algorithms that run
    the loop in chunks (the discrete adjoint's checkpoints) keep the states
    between chunks (`checkpoint`) and resume from them (`resume`), taking
    exactly the steps of the uninterrupted solve. Arguments as in `integrate`.
    """

    def __init__(self, fn, y0, t0, t1, method: ODEMethod, options: SolveOptions | None = None, *, saveat=None,
                 tstops=None, jump=None, include_in_norm=None, record=False, stop_controller_gradients=True):
        self.options = options or SolveOptions()
        self.max_steps = self.options.max_steps
        structure = y0
        flat0 = tf.nest.flatten(y0)

        def flat_fn(t, y):
            return tf.nest.flatten(fn(t, tf.nest.pack_sequence_as(structure, y)))

        if isinstance(fn, WithJacobian):  # a supplied Jacobian follows the flat view
            flat_fn = WithJacobian(flat_fn, lambda t, y: fn.jac(t, tf.nest.pack_sequence_as(structure, y)))
        elif isinstance(fn, SensitivitySystem):  # (u, S): flattened to [u, S], the structure kept
            flat_fn = SensitivitySystem(flat_fn, fn.state_fn, fn.state_jac, fn.coupling, fn.time_derivative)

        self.ctx = _context(flat_fn, structure, method, self.options, flat0, t0, t1, saveat, tstops, jump,
                            include_in_norm, record, stop_controller_gradients)
        self.t0 = tf.convert_to_tensor(t0, flat0[0].dtype)

    def start(self, y0, with_record: bool = True) -> _State:
        """The initial loop state; ``with_record=False`` allocates no record (see `run_recording_chunks`)."""
        ctx = self.ctx if with_record else self.ctx._replace(record=False)
        return _initial_state(ctx, self.options, tf.nest.flatten(y0), self.t0)

    def running(self, s: _State):
        """Whether the loop would take another iteration from ``s``."""
        return tf.equal(s.status, Status.SUCCESS) & (self.ctx.direction * (self.ctx.t1 - s.t) > 0)

    def run(self, s: _State, n: int) -> _State:
        """At most ``n`` (static) more iterations."""
        return tf.while_loop(self.running, lambda s: (_body(self.ctx, s),), (s,), maximum_iterations=n)[0]

    def finish(self, s: _State) -> IntegrateResult:
        return _finish(self.ctx, s)

    @staticmethod
    def checkpoint(s: _State) -> Checkpoint:
        """What `resume` needs to repeat the iterations after ``s`` exactly."""
        return Checkpoint(s.t, s.y, s.h, s.ratio_prev, s.carry, s.stop)

    def resume(self, c: Checkpoint, saved=None, record_steps: int | None = None) -> _State:
        """A state equal to the checkpointed one, counters at zero.

        ``f`` is re-evaluated from ``y`` (one evaluation), so gradients with
        respect to ``c.y`` see its dependence; ``saved`` defaults to zeros.
        With ``record=True`` and ``record_steps``, the resumed iterations are
        recorded (`dense_record`) in buffers of ``record_steps`` entries, not
        ``max_steps``: a chunk of at most that many iterations.
        """
        ctx = self.ctx
        dtype = c.t.dtype
        if saved is None and ctx.ts is not None:
            saved = [tf.zeros(tf.concat([tf.shape(ctx.ts), tf.shape(y)], 0), dtype) for y in c.y]
        zero = tf.constant(0, tf.int32)
        rec = ()
        if ctx.record and record_steps:
            rec = _dense.empty_record(record_steps, c.t, list(c.y), ctx.method.dense_rows)
        return _State(t=c.t, y=list(c.y), f=ctx.fn(c.t, list(c.y)), h=c.h, ratio_prev=c.ratio_prev, carry=c.carry,
                      saved=saved or [], steps=zero, accepted=zero, rejected=zero, nfe=tf.constant(1, tf.int32),
                      status=zero, stop=c.stop, rec=rec)

    def run_recording_chunks(self, s: _State, chunk: int, consume: Callable, acc) -> tuple[IntegrateResult, Any]:
        """Run from ``s`` to the end, handing the dense output to ``consume`` one chunk at a time.

        For a backward pass that needs a solve's dense output only once, step
        by step (a quadrature over the steps): the loop runs in chunks of
        ``chunk`` iterations, each recorded in buffers of ``chunk`` entries
        (not ``max_steps``) and passed to ``acc = consume(acc, record)`` as
        soon as it is complete. The steps are those of the uninterrupted
        solve (each chunk resumes from the previous one's loop state; one
        more evaluation of ``f`` per chunk), at most ``max_steps`` in all.
        Needs ``record=True``. Returns ``(result, acc)``; ``result.record``
        is None.
        """
        ctx = self.ctx
        n_chunks = -(-self.max_steps // chunk)
        totals0 = (s.steps, s.accepted, s.rejected, s.nfe)

        def body(s, totals, acc):
            r = self.run(self.resume(self.checkpoint(s), saved=s.saved, record_steps=chunk), chunk)
            acc = consume(acc, self.dense_record(r))
            totals = tuple(a + b for a, b in zip(totals, (r.steps, r.accepted, r.rejected, r.nfe)))
            return r._replace(rec=()), totals, acc

        s0 = s._replace(rec=())
        s, totals, acc = tf.while_loop(lambda s, *_: self.running(s), body, (s0, totals0, acc),
                                       maximum_iterations=n_chunks)
        final = s._replace(steps=totals[0], accepted=totals[1], rejected=totals[2], nfe=totals[3])
        return _finish(ctx._replace(record=False), final), acc

    def dense_record(self, s: _State) -> _dense.Record:
        """The dense output recorded since `resume` (``record_steps``) or `start`, ready to interpolate."""
        return _dense.finalize(s.rec, s.accepted, self.ctx.direction)


class Checkpoint(NamedTuple):
    """A loop state without its buffers (see `Stepper.checkpoint`)."""

    t: tf.Tensor
    y: list
    h: tf.Tensor
    ratio_prev: tf.Tensor
    carry: Any
    stop: tf.Tensor


def _context(fn, structure, method, options, y0, t0, t1, saveat, tstops, jump, include, record, stop_grads) -> _Ctx:
    dtype = y0[0].dtype
    t0 = tf.convert_to_tensor(t0, dtype)
    t1 = tf.convert_to_tensor(t1, dtype)
    span = tf.abs(t1 - t0)
    zero = tf.constant(0.0, dtype)
    ts = None if saveat is None else tf.cast(saveat, dtype)
    save_work = 0
    if ts is not None:
        save_work = sum((y.shape.num_elements() or SMALL_WORK) for y in y0) * (ts.shape[0] or SMALL_WORK)
    return _Ctx(
        fn=fn,
        structure=structure,
        method=method,
        t1=t1,
        direction=tf.where(t1 >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype)),
        eps=tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype),
        rtol=zero if options.rtol is None else to_dtype(options.rtol, dtype),
        atol=zero if options.atol is None else to_dtype(options.atol, dtype),
        dtmin=zero if options.dtmin is None else to_dtype(options.dtmin, dtype),
        dtmax=span if options.dtmax is None else tf.minimum(to_dtype(options.dtmax, dtype), span),
        controller=options.controller or PIController(),
        include=None if include is None else tf.nest.flatten(include),
        stop_grads=stop_grads,
        ts=ts,
        save_work=save_work,
        tstops=None if tstops is None else tf.cast(tstops, dtype),
        jump=jump,
        record=record,
    )


def _initial_state(ctx: _Ctx, options: SolveOptions, y0: list, t0) -> _State:
    dtype = t0.dtype
    method = ctx.method
    f0 = ctx.fn(t0, y0)
    nfe = tf.constant(1, tf.int32)
    span = tf.abs(ctx.t1 - t0)
    if options.dt is not None:
        h_abs = tf.abs(to_dtype(options.dt, dtype))
    elif method.adaptive:
        h_abs = initial_step(ctx.fn, t0, y0, f0, ctx.direction, method.error_order, ctx.rtol, ctx.atol, span)
        h_abs = tf.stop_gradient(h_abs)
        nfe += 1
    else:  # guarded by the entry points; keep a clear message for direct callers
        raise ValueError(f"fixed-step method {method!r} needs `dt`")
    h_abs = tf.minimum(h_abs, ctx.dtmax)

    saved = []
    if ctx.ts is not None:
        n_save = tf.shape(ctx.ts)[0]
        at_start = tf.equal(ctx.ts, t0)
        saved = [
            tf.where(_rows_mask(at_start, y.shape.rank), _at_time(y, f, ctx.ts, t0), tf.zeros_like(y[None]))
            * tf.ones(tf.concat([[n_save], tf.ones([y.shape.rank], tf.int32)], 0), dtype)
            for y, f in zip(y0, f0)
        ]
    stop = tf.constant(0, tf.int32)
    if ctx.tstops is not None:  # stops at or behind the start are not "ahead": skip them
        stop = tf.reduce_sum(tf.cast(ctx.direction * (ctx.tstops - t0) <= 0, tf.int32))
    rec = _dense.empty_record(options.max_steps, t0, y0, method.dense_rows) if ctx.record else ()
    init_status = tf.where(_all_finite(y0) & _all_finite(f0), Status.SUCCESS, Status.NONFINITE)
    return _State(
        t=t0, y=y0, f=f0, h=ctx.direction * h_abs, ratio_prev=tf.constant(1.0, dtype),
        carry=method.with_tolerances(method.init(ctx.fn, t0, y0, f0), ctx.rtol, ctx.atol), saved=saved,
        steps=tf.constant(0, tf.int32), accepted=tf.constant(0, tf.int32), rejected=tf.constant(0, tf.int32),
        nfe=nfe, status=tf.cast(init_status, tf.int32), stop=stop, rec=rec,
    )


def _propose(ctx: _Ctx, s: _State):
    """The step to attempt: ``(h, last, t_target, lands_on_stop)``."""
    target, stop_left = ctx.t1, None
    if ctx.tstops is not None:
        n_stops = tf.shape(ctx.tstops)[0]
        next_stop = tf.gather(ctx.tstops, tf.minimum(s.stop, n_stops - 1))
        # Stops beyond t1 are not this solve's business.
        stop_left = (s.stop < n_stops) & (ctx.direction * (next_stop - ctx.t1) <= 0)
        target = tf.where(stop_left, next_stop, ctx.t1)
    remaining = target - s.t
    # A remainder of a few ulps (e.g. ten steps of 0.1 summing to
    # 0.9999999999999999) is folded into this step, not left as a sliver.
    slack = 64.0 * ctx.eps * tf.maximum(tf.abs(s.t), tf.abs(target))
    last = tf.abs(s.h) + slack >= tf.abs(remaining)
    return tf.where(last, remaining, s.h), last, target, stop_left


def _control(ctx: _Ctx, s: _State, step):
    """Accept or reject a step: ``(accept, finite, h_next, ratio_prev)``."""
    method = ctx.method
    finite = _all_finite(step.y1)
    if not method.adaptive:
        return finite, finite, s.h, s.ratio_prev
    ratio = method.error_ratio(step, s.y, ctx.rtol, ctx.atol, ctx.include)
    if ctx.stop_grads:
        ratio = tf.stop_gradient(ratio)
    finite = finite & tf.math.is_finite(ratio)
    accept = (ratio <= 1.0) & finite
    ctrl = ctx.controller
    factor = ctrl.factor(tf.where(finite, ratio, tf.ones_like(ratio)), s.ratio_prev, accept, method.error_order)
    factor = tf.where(finite, factor, tf.constant(ctrl.factor_min, ratio.dtype))
    h_next = s.h * factor  # grow from the proposed step, not the clipped one
    h_next = ctx.direction * tf.minimum(tf.abs(h_next), ctx.dtmax)
    return accept, finite, h_next, tf.where(accept, ratio, s.ratio_prev)


# Save buffers longer than this are written through a window of this many
# consecutive save points starting at the first one the step reaches, so a
# step's cost does not grow with the number of save times. A step that
# passes more save points than the window holds (rare: the step outran the
# save grid) writes the whole buffer instead. The window's conditional has a
# fixed cost, so short buffers of small states (measured on Lotka--Volterra
# under XLA: even at 301 save times) are cheaper written whole.
SAVE_WINDOW = 16
_WINDOWED_FROM = 2 * SAVE_WINDOW  # save times
_WINDOWED_WORK = 1024  # save times x state elements


def _save(ctx: _Ctx, s: _State, step, h, t_new, accept):
    """Write the save points inside this step: ``(saved, extra_nfe)``."""
    if ctx.ts is None:
        return s.saved, 0
    n_save = ctx.ts.shape[0]
    if n_save is None or n_save < _WINDOWED_FROM or ctx.save_work < _WINDOWED_WORK:
        return _save_all(ctx, s, step, h, t_new, accept)
    key = ctx.direction * ctx.ts  # ascending
    lo = tf.reduce_sum(tf.cast(key <= ctx.direction * s.t, tf.int32))  # saves already written
    hi = tf.reduce_sum(tf.cast(key <= ctx.direction * t_new, tf.int32))
    n_in = tf.where(accept, hi - lo, 0)
    return tf.cond(n_in > SAVE_WINDOW, lambda: _save_all(ctx, s, step, h, t_new, accept),
                   lambda: _save_window(ctx, s, step, h, t_new, lo, lo + n_in))


def _save_all(ctx: _Ctx, s: _State, step, h, t_new, accept):
    """Interpolate at every save time and select the ones inside the step."""
    ts, method = ctx.ts, ctx.method
    in_step = (ctx.direction * (ts - s.t) > 0) & (ctx.direction * (ts - t_new) <= 0) & accept
    at_end = in_step & tf.equal(ts, t_new)
    interior = in_step & ~at_end

    def save():
        rows, extra = method.dense(ctx.fn, s.t, s.y, h, step)
        theta = tf.clip_by_value((ts - s.t) / h, 0.0, 1.0)
        interp = method.interpolate(theta, s.y, h, rows)
        out = [tf.where(_rows_mask(interior, buf.shape.rank - 1), val, buf) for buf, val in zip(s.saved, interp)]
        return out, tf.constant(extra, tf.int32)

    def keep():
        return list(s.saved), tf.constant(0, tf.int32)

    # A conditional has a fixed cost that exceeds the interpolation of a
    # small state; it pays off with extra stages or large buffers.
    if method.dense_nfe or ctx.save_work > SMALL_WORK:
        saved, extra_nfe = tf.cond(tf.reduce_any(interior), save, keep)
    else:
        saved, extra_nfe = save()
    # A save time on the step's end takes the step's own value.
    saved = [
        tf.where(_rows_mask(at_end, y1.shape.rank), _at_time(y1, f1, ts, t_new), buf)
        for buf, y1, f1 in zip(saved, step.y1, step.f1)
    ]
    return saved, tf.cast(extra_nfe, tf.int32)


def _save_window(ctx: _Ctx, s: _State, step, h, t_new, lo, hi):
    """Write the save points ``lo <= i < hi`` (at most `SAVE_WINDOW`) in place."""
    method = ctx.method
    start = tf.minimum(lo, ctx.ts.shape[0] - SAVE_WINDOW)
    idx = start + tf.range(SAVE_WINDOW)
    tw = tf.gather(ctx.ts, idx)
    valid = (idx >= lo) & (idx < hi)
    at_end = valid & tf.equal(tw, t_new)
    interior = valid & ~at_end
    old = [tf.gather(buf, idx) for buf in s.saved]

    def save():
        rows, extra = method.dense(ctx.fn, s.t, s.y, h, step)
        theta = tf.clip_by_value((tw - s.t) / h, 0.0, 1.0)
        interp = method.interpolate(theta, s.y, h, rows)
        out = [tf.where(_rows_mask(interior, w.shape.rank - 1), val, w) for w, val in zip(old, interp)]
        return out, tf.constant(extra, tf.int32)

    if method.dense_nfe:
        new, extra_nfe = tf.cond(tf.reduce_any(interior), save, lambda: (list(old), tf.constant(0, tf.int32)))
    else:
        new, extra_nfe = save()
    new = [
        tf.where(_rows_mask(at_end, y1.shape.rank), _at_time(y1, f1, tw, t_new), w)
        for w, y1, f1 in zip(new, step.y1, step.f1)
    ]
    saved = [tf.tensor_scatter_nd_update(buf, idx[:, None], w) for buf, w in zip(s.saved, new)]
    return saved, tf.cast(extra_nfe, tf.int32)


def _jump(ctx: _Ctx, s: _State, step, t_new, landed):
    """Apply the jump at a stop time: ``(y, f, stop index, extra_nfe)``."""
    if ctx.tstops is None:
        return step.y1, step.f1, s.stop, 0

    def do_jump():
        yj = tf.nest.flatten(ctx.jump(t_new, tf.nest.pack_sequence_as(ctx.structure, step.y1)))
        return yj, ctx.fn(t_new, yj), tf.constant(1, tf.int32)

    def no_jump():
        return list(step.y1), list(step.f1), tf.constant(0, tf.int32)

    y_new, f_new, nfe = tf.cond(landed, do_jump, no_jump)
    count = tf.reduce_sum(tf.cast(tf.equal(ctx.tstops, t_new), tf.int32))
    return y_new, f_new, tf.where(landed, s.stop + tf.maximum(count, 1), s.stop), nfe


def _record(ctx: _Ctx, s: _State, step, h, t_new, accept):
    """Write this attempt into the dense record: ``(rec, extra_nfe)``."""
    if not ctx.record:
        return s.rec, 0
    method = ctx.method
    if method.dense_nfe:  # pay for extra dense stages only on accepted steps
        def placeholder():
            rows = [tf.zeros(tf.concat([[method.dense_rows], tf.shape(y)], 0), y.dtype) for y in s.y]
            return rows, tf.constant(0, tf.int32)

        rows, extra = tf.cond(
            accept, lambda: _as_tensor_nfe(method.dense(ctx.fn, s.t, s.y, h, step)), placeholder
        )
    else:
        rows, extra = method.dense(ctx.fn, s.t, s.y, h, step)
    return _dense.write_record(s.rec, s.accepted, t_new, h, s.y, rows), extra


def _as_tensor_nfe(rows_nfe):
    rows, nfe = rows_nfe
    return rows, tf.constant(nfe, tf.int32)


def _body(ctx: _Ctx, s: _State) -> _State:
    h, last, target, stop_left = _propose(ctx, s)
    step = ctx.method.step(ctx.fn, s.t, s.y, s.f, h, s.carry)
    t_new = tf.where(last, target, s.t + h)
    accept, finite, h_next, ratio_prev = _control(ctx, s, step)
    saved, nfe_save = _save(ctx, s, step, h, t_new, accept)
    landed = accept & last & stop_left if stop_left is not None else None
    y_new, f_new, stop, nfe_jump = _jump(ctx, s, step, t_new, landed)
    rec, nfe_rec = _record(ctx, s, step, h, t_new, accept)
    nfe = s.nfe + step.nfe + nfe_save + nfe_jump + nfe_rec

    new = s._replace(
        t=t_new, y=y_new, f=f_new, h=h_next, ratio_prev=ratio_prev, saved=saved, steps=s.steps + 1,
        accepted=s.accepted + 1, nfe=nfe, stop=stop, carry=(), rec=(),
    )
    old = s._replace(h=h_next, ratio_prev=ratio_prev, steps=s.steps + 1, rejected=s.rejected + 1, nfe=nfe,
                     carry=(), rec=())
    # The method's carry (e.g. a Jacobian) is its own business on either path;
    # the record is written in place. Neither goes through the select.
    out = _where(accept, new, old)._replace(carry=step.carry, rec=rec)
    # Failure: the step cannot shrink further, or a fixed step gave NaN/Inf.
    # The smallest step that still moves t: a few ulps of t itself (not of t1:
    # a float32 solve from 0 to 1e5 needs steps far below 8 eps 1e5 = 0.1 early
    # on), and never below the smallest normal number.
    tiny = tf.constant(np.finfo(ctx.eps.dtype.as_numpy_dtype).tiny, ctx.eps.dtype)
    floor = tf.maximum(ctx.dtmin, tf.maximum(8.0 * ctx.eps * tf.abs(out.t), tiny))
    too_small = (~tf.equal(out.t, ctx.t1)) & (tf.abs(out.h) < floor)
    if ctx.method.adaptive:
        status = tf.where(too_small, tf.where(finite, Status.DT_MIN, Status.NONFINITE), Status.SUCCESS)
    else:
        status = tf.where(finite, Status.SUCCESS, Status.NONFINITE)
    return out._replace(status=tf.cast(status, tf.int32))


def _finish(ctx: _Ctx, final: _State) -> IntegrateResult:
    """Status, statistics and outputs; NaN where a failed solve did not reach."""
    unfinished = tf.equal(final.status, Status.SUCCESS) & (ctx.direction * (ctx.t1 - final.t) > 0)
    status = tf.where(unfinished, tf.constant(Status.MAX_STEPS, tf.int32), final.status)
    failed = tf.not_equal(status, Status.SUCCESS)
    stats = {"nfe": final.nfe, "steps": final.steps, "accepted": final.accepted, "rejected": final.rejected}
    stats.update(ctx.method.stats(final.carry))
    nan = tf.constant(np.nan, final.t.dtype)
    ys = None
    if ctx.ts is not None:
        # Save points beyond the time reached were never written.
        unreached = failed & (ctx.direction * (ctx.ts - final.t) > 0)
        saved = [b + tf.where(_rows_mask(unreached, b.shape.rank - 1), nan, tf.zeros_like(nan)) for b in final.saved]
        ys = tf.nest.pack_sequence_as(ctx.structure, nan_gradient_if(failed, saved))
    y1 = [y + tf.where(failed, nan, tf.zeros_like(nan)) for y in final.y]
    rec = _dense.finalize(final.rec, final.accepted, ctx.direction) if ctx.record else None
    return IntegrateResult(
        y1=tf.nest.pack_sequence_as(ctx.structure, nan_gradient_if(failed, y1)),
        ys=ys, t=final.t, stats=stats, status=status, h=final.h, record=rec,
    )
