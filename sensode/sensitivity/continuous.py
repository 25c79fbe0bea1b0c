"""Continuous adjoints: backsolve, interpolating and quadrature.

All three solve the adjoint ``a(t) = dL/du(t)``, ``da/dt = -a^T df/du``,
backwards from ``t1`` to ``t0`` with the *same* stepping loop as the forward
solve. The loss gradient at each save time enters as a jump in ``a``: the
backward solve lands on the save times and keeps its step size, instead of
restarting between them. The parameter gradient is
``dL/dp = int_{t0}^{t1} a^T df/dp dt``; time gradients come from the closed
forms in `sensode.sensitivity`.

* `BacksolveAdjoint` re-integrates ``u`` backwards with ``a`` (Chen et al.
  2018, Algorithm 2): O(1) memory in the number of steps, but the backward
  state solve is unstable for dissipative and chaotic systems.
* `InterpolatingAdjoint` reads ``u(t)`` from the forward solve's dense output
  (recorded in buffers of ``max_steps`` entries).
* `QuadratureAdjoint` integrates only ``a``; ``dL/dp`` is then a
  Gauss--Legendre quadrature over the backward steps, with ``a`` and ``u``
  from the two dense outputs.

With ``seminorm=True`` the parameter-gradient integrals take no part in step
size control (Kidger, Chen & Lyons, "Hey, that's not an ODE", ICML 2021).

References: Chen, Rubanova, Bettencourt & Duvenaud, "Neural ordinary
differential equations", NeurIPS 2018; Cao, Li, Petzold & Serban, SIAM J.
Sci. Comput. 24(3), 2003; Rackauckas et al., SciMLSensitivity.jl.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..derivatives import graph_if_eager, p_leaves, vjp
from ..ode.loop import interpolate
from .algorithms import BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint
from .base import segment_cap, segmented_forward, solve_segment
from ..solution import Status, raise_if_failed

__all__ = ["ContinuousAdjointMethod", "backward_solve"]


def _adjoint_options(spec, sensealg, h_init=None):
    over = {}
    if sensealg.rtol is not None:
        over["rtol"] = tf.cast(sensealg.rtol, spec.options["rtol"].dtype)
    if sensealg.atol is not None:
        over["atol"] = tf.cast(sensealg.atol, spec.options["atol"].dtype)
    if sensealg.alg is not None:
        over["tableau"] = sensealg.alg.tableau
    # The forward solve's last proposed step is a good first step for the
    # adjoint (the linearised dynamics share its time scales) and saves the
    # automatic start's cautious ramp-up; without it, the automatic choice.
    over["dt"] = None if h_init is None else tf.abs(h_init)
    return over


def _fail_to_nan(x, status):
    """Gradients of a failed backward solve are NaN, never silently wrong numbers."""
    bad = tf.not_equal(status, Status.SUCCESS)
    return tf.where(bad, tf.fill(tf.shape(x), tf.constant(np.nan, x.dtype)), x)


def backward_solve(
    spec, sensealg, u0, ts, t0, t1, p, variables, u1, record, g_u, g_cont=None, *, a_init=None, acc_init=None,
    h_init=None,
):
    """Solve the adjoint backwards; returns ``(du0, dp_list, dv_list, stats, status)``.

    Args:
      u0: the state at ``t0`` (shape and dtype reference).
      ts: ``[T]`` save times; only those in ``(t0, t1]`` enter as jumps.
      t0, t1: the interval, integrated from ``t1`` back to ``t0``.
      u1: state at ``t1`` (used by the backsolve adjoint).
      record: forward dense output (`loop.Record`) or None (backsolve).
      g_u: ``[T, *u.shape]`` loss gradient at the save times ``ts``.
      g_cont: optional ``g(t, u, p)`` of a running cost ``int g dt`` (scalar).
      a_init: adjoint at ``t1`` (default: the loss gradient at ``t1``);
        given when chaining checkpointed segments.
      h_init: first step of the backward solve (e.g. the forward solve's last
        proposed step); None chooses it automatically.
      acc_init: ``(dp_list, dv_list)`` accumulated so far (``dp_list`` over
        the floating leaves of ``p`` only).
    """
    f = spec.f
    dtype = u0.dtype
    direction = tf.where(t1 >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype))
    kind = type(sensealg)
    all_leaves = p_leaves(p)
    # Only floating leaves have gradients; the others (e.g. an integer setting
    # in a nest) take no part in the adjoint solve and get None.
    is_float = [(tf.is_tensor(x) or isinstance(x, tf.Variable)) and x.dtype.is_floating for x in all_leaves]
    leaves_p = [x for x, fl in zip(all_leaves, is_float) if fl]
    rank = u0.shape.rank

    def p_with(float_leaves):
        it = iter(float_leaves)
        full = [next(it) if fl else x for x, fl in zip(all_leaves, is_float)]
        return tf.nest.pack_sequence_as(p, full) if p is not None else None

    def float_only(xs):
        return [x for x, fl in zip(xs, is_float) if fl]

    def expand(float_grads):
        it = iter(float_grads)
        return [next(it) if fl else None for fl in is_float]

    def g_at(t):
        mask = tf.cast(tf.equal(ts, t), dtype)
        return tf.reduce_sum(tf.reshape(mask, [-1] + [1] * rank) * g_u, axis=0)

    def state_at(t):
        if record is None:
            raise AssertionError("no forward record")
        return interpolate(spec.tableau, record, t[None], direction)[0][0]

    def running_cost_grads(t, u):
        if g_cont is None:
            return None
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(u)
            tape.watch(leaves_p)
            for v in variables:
                tape.watch(v)
            val = g_cont(t, u, p_with(leaves_p))
        return tape.gradient(val, [u] + leaves_p + list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def adjoint_terms(t, u, a):
        _, du, dp, dv, _ = vjp(f, t, u, p, variables, a)
        da, dgp, dgv = -du, [-x for x in float_only(dp)], [-x for x in dv]
        extra = running_cost_grads(t, u)
        if extra is not None:  # d/dt a = -a f_u - g_u for a running cost
            da = da - extra[0]
            n_p = len(leaves_p)
            dgp = [x - e for x, e in zip(dgp, extra[1 : 1 + n_p])]
            dgv = [x - e for x, e in zip(dgv, extra[1 + n_p :])]
        return da, dgp, dgv

    a_start = g_at(t1) if a_init is None else a_init
    if acc_init is None:
        gp0 = [tf.zeros_like(x) for x in leaves_p]
        gv0 = [tf.zeros_like(v) for v in variables]
    else:
        gp0, gv0 = list(acc_init[0]), list(acc_init[1])
    zero_p = len(leaves_p) * [False]
    zero_v = len(variables) * [False]
    seminorm = sensealg.seminorm
    over = _adjoint_options(spec, sensealg, h_init)
    tstops = tf.reverse(ts, [0])

    if kind is BacksolveAdjoint:
        y0 = (u1, a_start, gp0, gv0)
        include = (True, True, zero_p if seminorm else [True] * len(leaves_p), zero_v if seminorm else [True] * len(variables))

        def rhs(t, y):
            u, a, _, _ = y
            da, dgp, dgv = adjoint_terms(t, u, a)
            return f(t, u, p), da, dgp, dgv

        def jump(t, y):
            u, a, gp, gv = y
            return u, a + g_at(t), gp, gv

    elif kind is InterpolatingAdjoint:
        y0 = (a_start, gp0, gv0)
        include = (True, zero_p if seminorm else [True] * len(leaves_p), zero_v if seminorm else [True] * len(variables))

        def rhs(t, y):
            a = y[0]
            da, dgp, dgv = adjoint_terms(t, state_at(t), a)
            return da, dgp, dgv

        def jump(t, y):
            return (y[0] + g_at(t),) + tuple(y[1:])

    elif kind is QuadratureAdjoint:
        y0 = (a_start,)
        include = (True,)

        def rhs(t, y):
            da, _, _ = adjoint_terms(t, state_at(t), y[0])
            return (da,)

        def jump(t, y):
            return (y[0] + g_at(t),)

    else:  # pragma: no cover - guarded by the dispatcher
        raise TypeError(f"not a continuous adjoint: {sensealg!r}")

    res = spec.integrate(
        graph_if_eager(rhs), y0, t1, t0, saveat=None, tstops=tstops, jump=jump, include_in_norm=include,
        record=kind is QuadratureAdjoint, **over,
    )
    stats, status = res.stats, res.status
    if kind is QuadratureAdjoint:
        du0 = res.y1[0]
        tab_b = over.get("tableau", spec.tableau)
        dp, dv, q_nfe = _quadrature(spec, tab_b, res.record, record, direction, leaves_p, variables, adjoint_terms)
        stats = dict(stats)
        stats["nfe"] = stats["nfe"] + q_nfe
    elif kind is BacksolveAdjoint:
        _, du0, dp, dv = res.y1
    else:
        du0, dp, dv = res.y1
    du0 = _fail_to_nan(du0, status)
    dp = [_fail_to_nan(x, status) for x in dp]
    dv = [_fail_to_nan(x, status) for x in dv]
    return du0, expand(dp), dv, stats, status


def _quadrature(spec, tab_b, rec_b, rec_f, direction, leaves_p, variables, adjoint_terms):
    """``int_{t0}^{t1} a^T df/dp dt`` by Gauss--Legendre on each backward step."""
    n_nodes = max(2, (spec.tableau.order + 2) // 2)
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    dtype = rec_b.h.dtype
    x = (x + 1.0) / 2.0
    w = w / 2.0
    acc0 = [tf.zeros_like(v) for v in leaves_p] + [tf.zeros_like(v) for v in variables]

    def body(j, acc):
        t_j = rec_b.t[j]
        h_j = rec_b.h[j]
        nodes = t_j + h_j * tf.constant(x, dtype)  # [K]
        a_nodes = interpolate(tab_b, rec_b, nodes, -direction)[0]
        u_nodes = interpolate(spec.tableau, rec_f, nodes, direction)[0]
        out = list(acc)
        for k in range(n_nodes):
            _, dgp, dgv = adjoint_terms(nodes[k], u_nodes[k], a_nodes[k])
            # dgp = -a^T f_p; the backward step has h_j of the opposite sign.
            out = [o + (h_j * float(w[k])) * g for o, g in zip(out, dgp + dgv)]
        return j + 1, out

    _, acc = tf.while_loop(
        lambda j, acc: j < rec_b.count,
        body,
        (tf.constant(0, tf.int32), acc0),
        maximum_iterations=rec_b.h.shape[0],
    )
    n_p = len(leaves_p)
    return acc[:n_p], acc[n_p:], rec_b.count * n_nodes


class ContinuousAdjointMethod:
    """`forward` / `backward` pair for `sensitivity.differentiable`.

    `InterpolatingAdjoint(checkpoints=k)` keeps only ``k + 1`` states in the
    forward pass; the backward pass re-solves one segment at a time with its
    dense output recorded (at most ``2 * ceil(max_steps / k)`` steps per
    segment) and chains the adjoint across the cuts.
    """

    def __init__(self, sensealg):
        self.sensealg = sensealg
        self.k = getattr(sensealg, "checkpoints", None)

    def forward(self, spec, u0, ts, t0, t1, p, variables):
        if self.k:
            u_saved, stats, status, cuts, states, hs = segmented_forward(spec, u0, ts, t0, t1, p, self.k)
            return u_saved, stats, status, (cuts, tf.stop_gradient(states), tf.stop_gradient(hs))
        record = not isinstance(self.sensealg, BacksolveAdjoint)
        res = spec.integrate(lambda t, u: spec.f(t, u, p), u0, t0, t1, saveat=ts, record=record)
        return res.ys, res.stats, res.status, (res.y1, res.record, res.h)

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u):
        if self.k:
            du0, dp, dv, status = self._backward_segments(spec, u0, ts, t0, t1, p, variables, aux, g_u)
        else:
            u1, record, h_last = aux
            du0, dp, dv, _, status = backward_solve(
                spec, self.sensealg, u0, ts, t0, t1, p, variables, u1, record, g_u, h_init=h_last
            )
        if tf.executing_eagerly():
            raise_if_failed(status, f"backward solve of {type(self.sensealg).__name__}")
        return du0, None, None, dp, dv

    def _segment_adjoint(self, spec, i, cuts, states, hs, ts, p, variables, g_u, u0, a, acc, first: bool):
        dt = spec.options.get("dt") if first else hs[i]
        res, _ = solve_segment(spec, states[i], dt, cuts[i], cuts[i + 1], ts, p, record=True, max_steps=segment_cap(spec, self.k))
        a, dp, dv, _, st = backward_solve(
            spec, self.sensealg, u0, ts, cuts[i], cuts[i + 1], p, variables, res.y1, res.record, g_u,
            a_init=a, acc_init=acc, h_init=res.h,
        )
        # Carry only the floating leaves' gradients (the others are None).
        return a, ([x for x in dp if x is not None], list(dv)), tf.where(tf.equal(res.status, 0), st, res.status)

    def _backward_segments(self, spec, u0, ts, t0, t1, p, variables, aux, g_u):
        cuts, states, hs = aux
        rank = u0.shape.rank
        at_end = tf.reshape(tf.cast(tf.equal(ts, t1), u0.dtype), [-1] + [1] * rank)
        a0 = tf.reduce_sum(at_end * g_u, axis=0)  # the loss gradient at t1
        is_float = [x.dtype.is_floating for x in p_leaves(p)]
        acc0 = ([tf.zeros_like(x) for x, fl in zip(p_leaves(p), is_float) if fl], [tf.zeros_like(v) for v in variables])

        def body(i, a, acc, status):
            a, acc, st = self._segment_adjoint(spec, i, cuts, states, hs, ts, p, variables, g_u, u0, a, acc, False)
            return i - 1, a, acc, tf.where(tf.equal(status, 0), st, status)

        # Segments k-1..1 in one loop; segment 0 (automatic first step) peeled.
        _, a, acc, status = tf.while_loop(
            lambda i, *_: i > 0,
            body,
            (tf.constant(self.k - 1, tf.int32), a0, acc0, tf.constant(0, tf.int32)),
            maximum_iterations=max(self.k - 1, 1),
        )
        a, acc, st = self._segment_adjoint(spec, 0, cuts, states, hs, ts, p, variables, g_u, u0, a, acc, True)
        status = tf.where(tf.equal(status, 0), st, status)
        # The first segment's backward solve ends on t0 and applies its jump.
        it = iter(acc[0])
        return a, [next(it) if fl else None for fl in is_float], acc[1], status
