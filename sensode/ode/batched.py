"""A per-sample batched loop: B solves of one explicit RK method, each with its own step.

`integrate` (`sensode.ode.loop`) solves one problem; a batch of problems that
share ``f``, ``tspan`` and the save times but not ``u0`` / ``p`` could be
solved by mapping it over the samples (`tf.vectorized_map` turns its
`tf.while_loop` into one loop over the active samples, `tf.map_fn` runs them
one after another). Both cost far more than one batched step: pfor's
converted loop gathers and scatters the active samples every iteration and
cannot compile under XLA; ``map_fn`` does not vectorise at all.

`integrate_batched` is that loop written for a batch, as torchode does: one
`tf.while_loop` whose state holds, per sample, the time, the step to try, the
controller's memory, the counters, the status and the index of the next save
time. Each iteration takes one RK step of every sample at once, each with its
own ``h`` (``fn`` sees a ``[B, 1]`` time), judges it with the sample's own
error norm, writes the save points the step passed and selects accept,
reject or "done" per sample with `tf.where`. It stops when every sample has
reached ``t1`` or failed. A sample that is done or failed keeps being
stepped (with a zero or meaningless step) but its state is never updated:
its cost is the price of one vectorised step for all.

Every rule is that of `sensode.ode.loop` for the same options (the landing
rule for ``t1``, the PI controller, the step floor, the statuses), and the
norms are those of `sensode.ode.control` taken per row, so a sample takes the
steps of its own single solve (the tests compare step counts). Scope: explicit
Runge--Kutta methods of `sensode.ode.methods` (no method carry), no stop
times, jumps or dense record: the forward solve of an ensemble.

The state is one ``[B, N]`` tensor (each sample's state flattened), so the
per-sample scalars broadcast as ``[B, 1]`` columns and the generic step of
`sensode.ode.rk` serves unchanged.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

from ..solution import Status
from . import rk
from .control import PIController, SolveOptions, error_ratio, initial_step
from .methods import ExplicitRK

__all__ = ["BatchedResult", "integrate_batched", "resume_batched"]


class BatchedResult(NamedTuple):
    """What `integrate_batched` returns; every field has a leading ``B`` axis.

    ``ys`` rows of failed samples (``status != 0``) are NaN.
    """

    ys: tf.Tensor  # [B, T, N] states at the save times
    t: tf.Tensor  # [B] time reached
    stats: dict  # nfe, steps, accepted, rejected: [B] int32
    status: tf.Tensor  # [B] int32
    # compact="defer" only: samples still running ([] int32; 0: the result is final) and the loop state
    # to hand to `resume_batched` (an opaque nest of tensors).
    pending: tf.Tensor | None = None
    state: tuple | None = None


class _State(NamedTuple):
    t: tf.Tensor  # [B]
    y: tf.Tensor  # [B, N]
    f: tf.Tensor  # [B, N]: fn(t, y), the next step's first stage
    h: tf.Tensor  # [B] signed step to try next
    ratio_prev: tf.Tensor  # [B] error ratio of the last accepted step
    log_ratio_prev: tf.Tensor  # [B] log(max(ratio_prev, 1e-4)), the PI controller's memory (`_pi_factor`)
    saved: tf.Tensor  # [B, T, N]
    next_save: tf.Tensor  # [B] int32: index of the first save time ahead of t
    steps: tf.Tensor  # [B] int32 (and the three counters below)
    accepted: tf.Tensor
    rejected: tf.Tensor
    nfe: tf.Tensor
    status: tf.Tensor  # [B] int32


class _Ctx(NamedTuple):
    fn: Callable  # fn(t [B, 1], [y [B, N]]) -> [[B, N]]
    method: ExplicitRK
    t0: tf.Tensor
    t1: tf.Tensor
    direction: tf.Tensor
    eps: tf.Tensor
    rtol: tf.Tensor
    atol: tf.Tensor
    dtmin: tf.Tensor
    dtmax: tf.Tensor
    controller: PIController
    ts: tf.Tensor  # [T]
    max_steps: int  # attempted steps per sample (a sample stops there: MAX_STEPS)


@tf.autograph.experimental.do_not_convert
def integrate_batched(
    fn: Callable, y0, t0, t1, method: ExplicitRK, options: SolveOptions | None = None, *, saveat, args=(),
    compact: bool | str = True,
) -> BatchedResult:
    """Integrate ``B`` problems ``dy_b/dt = fn_b(t, y_b)`` from ``t0`` to ``t1``, each with its own steps.

    Args:
      fn: ``fn(t, y, args) -> dy/dt`` for the whole batch: ``t`` ``[B, 1]``
        (each sample's own time), ``y`` ``[B, N]``, ``args`` as given (rows
        selected when the batch is compacted); returns ``[B, N]``. Row ``b``
        must depend on row ``b`` of ``y`` and ``args`` only.
      y0: ``[B, N]`` initial states, one floating dtype.
      t0, t1: scalar times shared by the samples (``t1 < t0`` integrates backwards).
      method: an explicit Runge--Kutta method (`ExplicitRK`).
      options: `SolveOptions` as for `integrate` (scalar tolerances).
      saveat: ``[T]`` save times, monotone in the direction of integration,
        inside ``[t0, t1]`` (checked by the caller).
      args: a nest of ``[B, ...]`` tensors handed to ``fn`` (the samples'
        parameters).
      compact: True: once at most ``max(B / 64, 4)`` samples are still
        running, gather them into a batch of that size and finish them there
        (static ``B >= 16`` only; `_COMPACT` lists the levels). A few slow
        samples then cost a small part of the batch per step instead of all
        of it; the results do not depend on it. It is a second loop to
        compile. ``"defer"``: one loop only, for a driver in eager code: the
        whole batch runs while more than ``B / 64`` samples run, or while
        the running ones are close to done (at their pace so far, at most
        `_SHORT_TAIL` of the iterations taken remain); the result then has
        ``pending`` (samples still running) and ``state``, and when
        ``pending > 0`` `resume_batched` (a second program, compiled only
        when a batch needs it) finishes them compacted. False: the whole
        batch runs until every sample is done.

    Returns:
      `BatchedResult`.
    """
    if not isinstance(method, ExplicitRK):
        raise TypeError(f"integrate_batched runs explicit Runge--Kutta methods only, got {method!r}")
    if compact not in (True, False, "defer"):
        raise ValueError(f"`compact` must be True, False or 'defer', got {compact!r}")
    options = options or SolveOptions()
    y0 = tf.convert_to_tensor(y0)
    dtype = y0.dtype
    bind = _binder(fn)
    ctx = _context(bind(args), method, options, dtype, t0, t1, saveat)
    s = _initial_state(ctx, options, y0, ctx.t0)
    sizes = _compact_sizes(y0.shape[0]) if compact else []
    if compact == "defer":
        if sizes:
            small = sizes[0]
            go = lambda n, s_: (n > small) | ((n > 0) & _short_tail(ctx, s_))  # noqa: E731
        else:
            go = lambda n, s_: n > 0  # noqa: E731
        s = _run(ctx, s, args, _plain_step(ctx), go, options.max_steps)
        pending = tf.reduce_sum(tf.cast(_running(ctx, s), tf.int32))
        return _finish(ctx, s)._replace(pending=pending, state=s)
    step = _shared_step(ctx, bind, s, args) if sizes else _plain_step(ctx)
    return _finish(ctx, _run_compacting(ctx, s, args, step, sizes, options.max_steps))


@tf.autograph.experimental.do_not_convert
def resume_batched(
    fn: Callable, state, t0, t1, method: ExplicitRK, options: SolveOptions | None = None, *, saveat, args=(),
) -> BatchedResult:
    """Finish what ``integrate_batched(..., compact="defer")`` left running, compacted.

    Args:
      fn, t0, t1, method, options, saveat, args: those of the
        `integrate_batched` call.
      state: its result's ``state``.

    Returns:
      `BatchedResult` of the whole batch (``pending`` 0).
    """
    options = options or SolveOptions()
    bind = _binder(fn)
    ctx = _context(bind(args), method, options, state.y.dtype, t0, t1, saveat)
    sizes = _compact_sizes(state.y.shape[0])
    if not sizes:  # `integrate_batched` left nothing running
        return _finish(ctx, state)._replace(pending=tf.constant(0, tf.int32), state=state)
    step = lambda s_, args_: _body(ctx._replace(fn=bind(args_)), s_)  # noqa: E731
    s = _run_compacting(ctx, state, args, step, sizes[:1], options.max_steps, first_level_done=True)
    return _finish(ctx, s)._replace(pending=tf.constant(0, tf.int32), state=s)


def _binder(fn: Callable) -> Callable:
    def bind(args):
        def shaped_fn(t, y):  # the static shape of the state survives any reshapes inside `fn`
            out = [tf.convert_to_tensor(o) for o in fn(t, y, args)]
            for o, x in zip(out, y):
                o.set_shape(x.shape)
            return out

        return shaped_fn

    return bind


def _plain_step(ctx: _Ctx) -> Callable:
    return lambda s_, args_: _body(ctx, s_)


def _compact_sizes(batch) -> list:
    """The batch sizes of the compaction levels (`_COMPACT`) for a static ``batch``; [] when too small or unknown."""
    sizes = []
    if batch is not None and batch >= 4 * _MIN_COMPACT:
        for c in _COMPACT:
            size = max(batch // c, _MIN_COMPACT)
            if size < (sizes[-1] if sizes else batch):
                sizes.append(size)
    return sizes


def _short_tail(ctx: _Ctx, s: _State):
    """True when every running sample, at its pace so far, needs at most `_SHORT_TAIL` of the iterations taken."""
    running = _running(ctx, s)
    dtype = s.t.dtype
    taken = tf.cast(s.steps, dtype)  # a running sample has run every iteration so far
    done = ctx.direction * (s.t - ctx.t0)
    left = ctx.direction * (ctx.t1 - s.t)
    inf = tf.constant(np.inf, dtype)
    guess = tf.where(done > 0, taken * left / tf.where(done > 0, done, tf.ones_like(done)), inf)
    guess = tf.where(running, guess, tf.zeros_like(guess))
    return tf.reduce_max(guess) <= _SHORT_TAIL * tf.reduce_max(tf.where(running, taken, tf.zeros_like(taken)))


# compact="defer": the whole batch keeps running while the samples still running need at most this part of the
# iterations taken (a second compiled loop costs more than that on a CPU: on the Sobol benchmark's Lotka--Volterra
# ensembles, B = 4096, the last 64 samples need ~13% more iterations; compacting them saves 8 of 60 ms per batch and
# costs 1.5 s of compilation).
_SHORT_TAIL = 0.25


def _shared_step(ctx: _Ctx, bind: Callable, s: _State, args) -> Callable:
    """``step(s, args) -> s``: one traced loop body for the full and the compacted batches.

    A graph function with the batch dimension left open, so each compaction
    level's loop calls it instead of tracing the whole step again (XLA
    inlines it: compile time is unchanged, tracing is paid once; on the
    Sobol benchmark's Lotka--Volterra ensemble the trace took 1.3 s).
    """
    relax = lambda x: tf.TensorSpec([None] + x.shape[1:].as_list(), x.dtype)  # noqa: E731
    signature = (tf.nest.map_structure(relax, s), tf.nest.map_structure(relax, args))

    @tf.function(autograph=False, input_signature=signature)
    def step(s_, args_):
        return _body(ctx._replace(fn=bind(args_)), s_)

    return step


def _run_compacting(ctx: _Ctx, s: _State, args, step: Callable, sizes: list, max_steps: int,
                    first_level_done: bool = False) -> _State:
    """Run the batch while more than ``sizes[0]`` samples run, then those samples alone (recursively)."""
    if not sizes:
        return _run(ctx, s, args, step, lambda n_active, s_: n_active > 0, max_steps)
    small = sizes[0]
    if not first_level_done:
        s = _run(ctx, s, args, step, lambda n_active, s_: n_active > small, max_steps)
    rows = tf.math.top_k(tf.cast(_running(ctx, s), tf.int32), k=small, sorted=False).indices
    take = lambda x: tf.gather(x, rows)  # noqa: E731
    sub_args = tf.nest.map_structure(take, args)
    sub = _run_compacting(ctx, tf.nest.map_structure(take, s), sub_args, step, sizes[1:], max_steps)
    return tf.nest.map_structure(lambda x, y: tf.tensor_scatter_nd_update(x, rows[:, None], y), s, sub)


# The compacted batches (each level a further while loop to compile): B / 64
# samples (at least 4). Measured at B = 4096 on a batch with three samples
# needing 20,000 steps: B / 64 finishes it in 0.76 s, B / 16 in 1.04 s (the
# tail's iterations cost less); on a homogeneous batch both are equal. Two
# levels, (8, 64), took that heterogeneous batch from 315 to 192 ms (load
# 0.4-1.7) but cost a third compiled loop: a first call 2.3 -> 3.65 s, and
# the Sobol benchmark end to end (N = 4096, compile included) 2.8 -> 4.0 s.
_COMPACT = (64,)
_MIN_COMPACT = 4


def _run(ctx: _Ctx, s: _State, args, step: Callable, go: Callable, max_steps: int) -> _State:
    """Iterate ``step(s, args)`` while ``go(number of running samples, state)``."""
    def cond(s):
        return go(tf.reduce_sum(tf.cast(_running(ctx, s), tf.int32)), s)

    def body(s):
        out = step(s, args)
        return (tf.nest.map_structure(lambda new, old: tf.ensure_shape(new, old.shape), out, s),)

    return tf.while_loop(cond, body, (s,), maximum_iterations=max_steps)[0]


def _context(fn, method, options, dtype, t0, t1, saveat) -> _Ctx:
    t0 = tf.convert_to_tensor(t0, dtype)
    t1 = tf.convert_to_tensor(t1, dtype)
    span = tf.abs(t1 - t0)
    zero = tf.constant(0.0, dtype)
    return _Ctx(
        fn=fn,
        method=method,
        t0=t0,
        t1=t1,
        direction=tf.where(t1 >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype)),
        eps=tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype),
        rtol=zero if options.rtol is None else tf.cast(options.rtol, dtype),
        atol=zero if options.atol is None else tf.cast(options.atol, dtype),
        dtmin=zero if options.dtmin is None else tf.cast(options.dtmin, dtype),
        dtmax=span if options.dtmax is None else tf.minimum(tf.cast(options.dtmax, dtype), span),
        controller=options.controller or PIController(),
        ts=tf.cast(saveat, dtype),
        max_steps=options.max_steps,
    )


def _col(x):
    return x[:, None]


def _all_finite(x):
    return tf.reduce_all(tf.math.is_finite(x), axis=-1)


def _running(ctx: _Ctx, s: _State):
    return tf.equal(s.status, Status.SUCCESS) & (ctx.direction * (ctx.t1 - s.t) > 0) & (s.steps < ctx.max_steps)


def _initial_state(ctx: _Ctx, options: SolveOptions, y0, t0) -> _State:
    dtype = y0.dtype
    method = ctx.method
    batch = tf.shape(y0)[0]
    tb = tf.fill([batch], t0)
    f0 = ctx.fn(_col(tb), [y0])[0]
    nfe = 1
    if options.dt is not None:
        h_abs = tf.fill([batch], tf.abs(tf.cast(options.dt, dtype)))
    elif method.adaptive:
        span = tf.abs(ctx.t1 - t0)
        h_abs = initial_step(ctx.fn, _col(tb), [y0], [f0], ctx.direction, method.error_order, ctx.rtol, ctx.atol,
                             span, per_row=True)[:, 0]
        h_abs = tf.stop_gradient(h_abs)
        nfe += 1
    else:  # guarded by the entry points
        raise ValueError(f"fixed-step method {method!r} needs `dt`")
    h_abs = tf.minimum(h_abs, ctx.dtmax)
    # Save times at t0 take u0 (as `loop._at_time`: y + (ts - t0) f, equal to y in value).
    ts = ctx.ts
    at_start = tf.equal(ts, t0)
    saved = y0[:, None] + (ts - t0)[None, :, None] * f0[:, None]
    saved = tf.where(at_start[None, :, None], saved, tf.zeros_like(saved))
    next_save = tf.fill([batch], tf.reduce_sum(tf.cast(ctx.direction * (ts - t0) <= 0, tf.int32)))
    zeros = tf.zeros([batch], tf.int32)
    status = tf.where(_all_finite(y0) & _all_finite(f0), Status.SUCCESS, Status.NONFINITE)
    return _State(
        t=tb, y=y0, f=f0, h=ctx.direction * h_abs, ratio_prev=tf.ones([batch], dtype),
        log_ratio_prev=tf.zeros([batch], dtype), saved=saved,
        next_save=next_save, steps=zeros, accepted=zeros, rejected=zeros, nfe=zeros + nfe,
        status=tf.cast(status, tf.int32),
    )


_LOG_RATIO_FLOOR = float(np.log(1e-4))  # PIController.factor's floor of ratio_prev


def _pi_factor(ctrl: PIController, ratio, log_ratio_prev, accepted, error_order: int):
    """`PIController.factor` in log space: ``(factor, log ratio)`` per sample.

    The same formula, ``safety * r**(-beta1) * max(r_prev, 1e-4)**beta2``
    (clipped) after an accepted step and ``safety * r**(-1/k)`` after a
    rejected one, as one `exp` of a sum of logs, with ``log r_prev`` carried
    in the loop state: one log and one exp per sample and step instead of
    three pows. XLA's float64 pow costs tens of nanoseconds per element on a
    CPU; for B = 1024 the three pows were half the time of an iteration. The
    factor differs from the pows by a few ulps.
    """
    beta1, beta2 = ctrl.coefficients(error_order)
    dtype = ratio.dtype
    log_r = tf.math.log(tf.maximum(ratio, tf.constant(1e-10, dtype)))
    exponent = tf.where(accepted, -beta1 * log_r + beta2 * log_ratio_prev, log_r * (-1.0 / (error_order + 1.0)))
    raw = ctrl.safety * tf.exp(exponent)
    factor = tf.where(accepted, tf.clip_by_value(raw, ctrl.factor_min, ctrl.factor_max),
                      tf.clip_by_value(raw, ctrl.factor_min, 1.0))
    return factor, tf.maximum(log_r, tf.constant(_LOG_RATIO_FLOOR, dtype))


def _control(ctx: _Ctx, s: _State, res: rk.StepResult):
    """Accept or reject each sample's step: ``(accept, finite, h_next, ratio_prev, log_ratio_prev)`` ``[B]``."""
    method = ctx.method
    finite = _all_finite(res.y1[0])
    if not method.adaptive:
        return finite, finite, s.h, s.ratio_prev, s.log_ratio_prev
    ratio = error_ratio(res.err, [s.y], res.y1, ctx.rtol, ctx.atol, res.err_secondary, per_row=True)[:, 0]
    ratio = tf.stop_gradient(ratio)
    finite = finite & tf.math.is_finite(ratio)
    accept = (ratio <= 1.0) & finite
    ctrl = ctx.controller
    safe_ratio = tf.where(finite, ratio, tf.ones_like(ratio))
    if type(ctrl) is PIController:
        factor, log_ratio = _pi_factor(ctrl, safe_ratio, s.log_ratio_prev, accept, method.error_order)
    else:  # a controller of its own: its formula
        factor = ctrl.factor(safe_ratio, s.ratio_prev, accept, method.error_order)
        log_ratio = tf.math.log(tf.maximum(safe_ratio, tf.constant(1e-4, ratio.dtype)))
    factor = tf.where(finite, factor, tf.constant(ctrl.factor_min, ratio.dtype))
    h_next = s.h * factor  # grow from the proposed step, not the clipped one
    h_next = ctx.direction * tf.minimum(tf.abs(h_next), ctx.dtmax)
    return accept, finite, h_next, tf.where(accept, ratio, s.ratio_prev), tf.where(accept, log_ratio, s.log_ratio_prev)


def _save(ctx: _Ctx, s: _State, res: rk.StepResult, h, t_new, accept):
    """Write the save times each accepted step passed: ``(saved, next_save, extra_nfe [B])``.

    The save times inside a step are the next ones from ``next_save`` on:
    each pass writes one per sample (usually none or one are due), reading
    the dense output at that sample's own ``theta``. A save time on the
    step's end takes the step's value (``y1 + (ts - t_new) f1``, as the loop does).
    """
    ts, method, tab = ctx.ts, ctx.method, ctx.method.tableau
    n_ts = tf.shape(ts)[0]
    batch = tf.shape(t_new)[0]

    def valid_at(j):
        idx = s.next_save + j
        t_save = tf.gather(ts, tf.minimum(idx, n_ts - 1))
        return accept & (idx < n_ts) & (ctx.direction * (t_save - t_new) <= 0), idx, t_save

    valid0, idx0, t_save0 = valid_at(0)
    interior = valid0 & ~tf.equal(t_save0, t_new)  # save times strictly inside the step (sorted)
    stages = res.stages
    if method.dense_nfe:  # extra dense stages only when some sample needs them
        def extra():
            return rk.dense_stages(ctx.fn, tab, _col(s.t), [s.y], _col(h), stages)

        def none():
            return stages + [[tf.zeros_like(s.y)]] * tab.extra_stages

        stages = tf.cond(tf.reduce_any(interior), extra, none)
    rows = [stages[i][0] for i in tab.dense_rows]
    extra_nfe = tf.cast(interior, tf.int32) * method.dense_nfe

    def body(j, saved, count, valid, idx, t_save):
        theta = tf.clip_by_value((t_save - s.t) / h, 0.0, 1.0)
        w = rk.dense_weights(tab, theta)  # [B, R]
        interp = s.y + _col(h) * tf.add_n([w[:, r : r + 1] * k for r, k in enumerate(rows)])
        at_end = res.y1[0] + _col(t_save - t_new) * res.f_new[0]
        value = tf.where(_col(tf.equal(t_save, t_new)), at_end, interp)
        where = tf.stack([tf.range(batch), tf.minimum(idx, n_ts - 1)], axis=1)
        value = tf.where(_col(valid), value, tf.gather_nd(saved, where))
        saved = tf.tensor_scatter_nd_update(saved, where, value)
        return (j + 1, saved, count + tf.cast(valid, tf.int32)) + valid_at(j + 1)

    # The first pass is straight-line code: in a batch, some sample nearly
    # always has a save time in its step, and a loop costs XLA a pass of its
    # own (measured: the first pass inside the loop made an iteration 25%
    # slower at B = 4096). Further passes (steps longer than the spacing of
    # the save times) run in the loop.
    first = body(tf.constant(0, tf.int32), s.saved, tf.zeros_like(s.next_save), valid0, idx0, t_save0)
    _, saved, count, *_ = tf.while_loop(lambda j, saved, count, valid, idx, t_save: tf.reduce_any(valid), body, first)
    return saved, s.next_save + count, extra_nfe


def _body(ctx: _Ctx, s: _State) -> _State:
    active = _running(ctx, s)
    # `loop._propose`: land exactly on t1, folding a remainder of a few ulps into the step.
    remaining = ctx.t1 - s.t
    slack = 64.0 * ctx.eps * tf.maximum(tf.abs(s.t), tf.abs(ctx.t1))
    last = tf.abs(s.h) + slack >= tf.abs(remaining)
    h = tf.where(last, remaining, s.h)
    res = rk.rk_step(ctx.fn, ctx.method.tableau, _col(s.t), [s.y], [s.f], _col(h))
    t_new = tf.where(last, ctx.t1, s.t + h)
    accept, finite, h_next, ratio_prev, log_ratio_prev = _control(ctx, s, res)
    accept = accept & active
    saved, next_save, extra_nfe = _save(ctx, s, res, h, t_new, accept)
    step = tf.cast(active, tf.int32)
    nfe = s.nfe + step * (ctx.method.tableau.stages + extra_nfe)

    acc_col = _col(accept)
    t_out = tf.where(accept, t_new, s.t)
    h_out = tf.where(active, h_next, s.h)
    # Failure: the step cannot shrink further (`loop._body`'s floor), or a fixed step gave NaN/Inf.
    tiny = tf.constant(np.finfo(ctx.eps.dtype.as_numpy_dtype).tiny, ctx.eps.dtype)
    floor = tf.maximum(ctx.dtmin, tf.maximum(8.0 * ctx.eps * tf.abs(t_out), tiny))
    too_small = (~tf.equal(t_out, ctx.t1)) & (tf.abs(h_out) < floor)
    if ctx.method.adaptive:
        status = tf.where(too_small, tf.where(finite, Status.DT_MIN, Status.NONFINITE), Status.SUCCESS)
    else:
        status = tf.where(finite, Status.SUCCESS, Status.NONFINITE)
    return _State(
        t=t_out,
        y=tf.where(acc_col, res.y1[0], s.y),
        f=tf.where(acc_col, res.f_new[0], s.f),
        h=h_out,
        ratio_prev=tf.where(active, ratio_prev, s.ratio_prev),
        log_ratio_prev=tf.where(active, log_ratio_prev, s.log_ratio_prev),
        saved=saved,
        next_save=next_save,
        steps=s.steps + step,
        accepted=s.accepted + tf.cast(accept, tf.int32),
        rejected=s.rejected + tf.cast(active & ~accept, tf.int32),
        nfe=nfe,
        status=tf.where(active, tf.cast(status, tf.int32), s.status),
    )


def _finish(ctx: _Ctx, s: _State) -> BatchedResult:
    unfinished = tf.equal(s.status, Status.SUCCESS) & (ctx.direction * (ctx.t1 - s.t) > 0)
    status = tf.where(unfinished, tf.constant(Status.MAX_STEPS, tf.int32), s.status)
    failed = tf.reshape(tf.not_equal(status, Status.SUCCESS), [-1, 1, 1])
    ys = tf.where(failed, tf.constant(np.nan, s.saved.dtype), s.saved)
    stats = {"nfe": s.nfe, "steps": s.steps, "accepted": s.accepted, "rejected": s.rejected}
    return BatchedResult(ys=ys, t=s.t, stats=stats, status=status)
