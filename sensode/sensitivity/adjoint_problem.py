"""The continuous adjoint as just another ODE, solved backwards by the same loop.

All continuous adjoints solve ``a(t) = dL/du(t)``, ``da/dt = -a^T df/du``,
from ``t1`` back to ``t0``. The loss gradient at each save time enters as a
jump in ``a``: the backward solve lands on the save times and keeps its step
size instead of restarting between them. The parameter gradient is
``dL/dp = int_{t0}^{t1} a^T df/dp dt``; time gradients come from the closed
forms of `sensode.sensitivity.base`.

`ContinuousAdjoint` builds that backward problem and runs it; its subclasses
(`BacksolveAdjoint`, `InterpolatingAdjoint`, `QuadratureAdjoint`) differ only
in four hooks: the backward state (`adjoint_state`), its right-hand side
(`adjoint_rhs`), the jump at a save time (`adjoint_jump`) and how the result
is read (`adjoint_result`). Adding an adjoint is one module with those hooks.

With ``seminorm=True`` the parameter-gradient integrals take no part in step
size control (Kidger, Chen & Lyons, "Hey, that's not an ODE", ICML 2021).

References: Chen, Rubanova, Bettencourt & Duvenaud, "Neural ordinary
differential equations", NeurIPS 2018; Cao, Li, Petzold & Serban, SIAM J.
Sci. Comput. 24(3), 2003; Rackauckas et al., SciMLSensitivity.jl.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from ..derivatives import densify, graph_if_eager, vjp
from ..ode import dense
from ..ode.linear import WithJacobian, jacobian
from ..ode.loop import Checkpoint, Stepper
from ..params import Params
from ..validation import to_dtype
from .base import ForwardPass, Gradients, SensitivityAlgorithm, nan_if_failed
from .checkpoint import backward_sweep, first_status, segment_cap, segmented_forward, solve_segment
from .discrete import chunking, run_in_chunks

__all__ = ["AdjointProblem", "AdjointResult", "ContinuousAdjoint", "backward_solve", "minus_jac_transposed",
           "adjoint_jac_with_integrals"]


class AdjointProblem(NamedTuple):
    """The data of one backward solve, with the pieces every adjoint uses."""

    spec: Any
    p: Any
    params: Params
    variables: list
    ts: tf.Tensor  # [T] save times
    g_u: tf.Tensor  # [T, *u.shape] loss gradient at the save times
    g_cont: Any  # running cost g(t, u, p) or None
    record: Any  # forward dense output (`Record`) or None
    u1: tf.Tensor  # forward state at t1
    direction: tf.Tensor

    def g_at(self, t):
        """The loss gradient at the save times equal to ``t`` (summed)."""
        mask = tf.cast(tf.equal(self.ts, t), self.g_u.dtype)
        return tf.reduce_sum(tf.reshape(mask, [-1] + [1] * (self.g_u.shape.rank - 1)) * self.g_u, axis=0)

    def state_at(self, t):
        """The forward state at ``t``, from the recorded dense output."""
        # Extrapolated past the span's ends: a stage outside its step (Kvaerno5's) on the last backward step.
        return tf.squeeze(dense.interpolate(self.spec.method, self.record, tf.reshape(t, [1]), self.direction,
                                            extrapolate=True)[0], 0)

    def terms(self, t, u, a):
        """``(da/dt, d(dL/dp)/dt, d(dL/dvars)/dt)`` at ``(t, u, a)``, running cost included."""
        _, du, dp, dv, _ = vjp(self.spec.f, t, u, self.p, self.variables, a)
        da, dgp, dgv = -du, [-x for x in dp], [-x for x in dv]
        if self.g_cont is not None:  # d/dt a = -a f_u - g_u for a running cost
            leaves = self.params.float_leaves
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(u)
                tape.watch(leaves)
                for v in self.variables:
                    tape.watch(v)
                val = self.g_cont(t, u, self.params.pack(leaves))
            extra = densify(tape.gradient(val, [u] + leaves + list(self.variables),
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO))
            n_p = len(leaves)
            da = da - extra[0]
            dgp = [x - e for x, e in zip(dgp, extra[1 : 1 + n_p])]
            dgv = [x - e for x, e in zip(dgv, extra[1 + n_p :])]
        return da, dgp, dgv


def minus_jac_transposed(prob: AdjointProblem, t, u):
    """``-J(t, u)^T`` from the problem's ``jac``: the Jacobian of ``da/dt = -J^T a`` in ``a``."""
    return -tf.transpose(prob.spec.jac(t, u, prob.p))


def adjoint_jac_with_integrals(prob: AdjointProblem, t, u, y):
    """Jacobian of ``(da/dt, d(dL/dp)/dt, d(dL/dvars)/dt)`` in ``y = (a, dp, dvars)``.

    ``[[-J^T, 0], [C, 0]]``: the integrals do not feed back, and their rows
    ``C = -(df/dp)^T`` (linear in ``a``) come from automatic
    differentiation, as ``jac`` holds no parameter derivatives.
    """
    a = y[0]
    jt = minus_jac_transposed(prob, t, u)
    n = jt.shape[0]
    m = sum(int(x.shape.num_elements()) for x in tf.nest.flatten(y[1:]))
    if m == 0:
        return jt

    def integrals(t_, av):
        _, dgp, dgv = prob.terms(t_, u, tf.reshape(av, tf.shape(a)))
        return tf.concat([tf.reshape(x, [-1]) for x in list(dgp) + list(dgv)], axis=0)

    c, _ = jacobian(integrals, t, tf.reshape(a, [-1]), with_t=False)  # [m, n]
    return tf.concat([tf.concat([jt, c], axis=0), tf.zeros([n + m, m], jt.dtype)], axis=1)


class AdjointResult(NamedTuple):
    """A backward solve's result: ``a(t0)``, the accumulated gradients, stats, status."""

    du0: tf.Tensor
    dp: list  # over the differentiable leaves of p
    dvars: list
    stats: dict
    status: tf.Tensor


class _Aux(NamedTuple):
    u1: tf.Tensor
    record: Any
    h: tf.Tensor


class _ChunkedAux(NamedTuple):
    """The forward pass of a recording `ContinuousAdjoint`: loop states at chunk starts, no dense output."""

    starts: Checkpoint  # each field stacked: [n_chunks, ...]
    count: tf.Tensor  # chunks used


@dataclasses.dataclass(frozen=True)
class ContinuousAdjoint(SensitivityAlgorithm):
    """Options shared by the continuous adjoints.

    Args:
      rtol, atol: tolerances of the backward solve (default: the forward ones).
      alg: ODE method of the backward solve (default: the forward one).
      seminorm: leave the parameter integrals out of step-size control.
    """

    rtol: float | None = None
    atol: float | None = None
    alg: Any = None
    seminorm: bool = True

    # ------------------------------------------------------------------ hooks
    records_forward = True  # does the backward pass read the forward dense output?
    records_backward = False  # does `adjoint_result` read the backward dense output?

    def adjoint_state(self, prob: AdjointProblem, a, gp, gv):
        """``(y0, include_in_norm)`` of the backward solve at ``t1``."""
        raise NotImplementedError

    def adjoint_rhs(self, prob: AdjointProblem, t, y):
        raise NotImplementedError

    def adjoint_jump(self, prob: AdjointProblem, t, y):
        raise NotImplementedError

    def adjoint_result(self, prob: AdjointProblem, res, method, t0, t1, consumed=None):
        """``(du0, dp, dvars, extra_nfe)`` from the backward solve's result (and `consume_backward`'s, if any)."""
        raise NotImplementedError

    # With ``records_backward``: the backward dense output is handed over one
    # chunk at a time, ``acc = consume_backward(prob, method, acc, record)``
    # from ``consume_init(prob, acc_init)`` (``acc_init = (dp, dvars)`` accumulated
    # by earlier chunks of the backward pass); the final ``acc`` reaches `adjoint_result`.
    def consume_init(self, prob: AdjointProblem, acc_init):
        raise NotImplementedError

    def consume_backward(self, prob: AdjointProblem, method, acc, record):
        raise NotImplementedError

    # Optional hook: ``adjoint_jac(prob, t, y) -> [Nb, Nb]``, the Jacobian of
    # `adjoint_rhs` (backward state flattened as `sensode.ode.linear.Layout`
    # does), built from the problem's ``jac`` for a stiff backward solve.
    # None: the stiff method differentiates `adjoint_rhs`.
    adjoint_jac = None

    def checkpoint_count(self) -> int | None:
        return None

    # ------------------------------------------------------------ the passes
    def gradient_norm_flags(self, gp, gv):
        """``include_in_norm`` flags of the parameter integrals (False with the seminorm)."""
        return [not self.seminorm] * len(gp), [not self.seminorm] * len(gv)

    def forward(self, spec, u0, ts, t0, t1, p, variables) -> ForwardPass:
        k = self.checkpoint_count()
        if k:
            cp = segmented_forward(spec, u0, ts, t0, t1, p, k)
            return ForwardPass(cp.u, cp.stats, cp.status, cp)
        if self.records_forward:  # the dense output is recorded chunk by chunk in the backward pass
            return self._forward_chunks(spec, u0, ts, t0, t1, p)
        res = spec.solve_plain(u0, ts, t0, t1, p)
        return ForwardPass(res.ys, res.stats, res.status, _Aux(res.y1, res.record, res.h))

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u) -> Gradients:
        if isinstance(aux, _ChunkedAux):
            du0, dp, dv, status = self._backward_chunks(spec, u0, ts, t0, t1, p, variables, aux, g_u)
        elif self.checkpoint_count():
            du0, dp, dv, status = self._backward_segments(spec, u0, ts, t0, t1, p, variables, aux, g_u)
        else:
            r = backward_solve(spec, self, u0, ts, t0, t1, p, variables, aux.u1, aux.record, g_u, h_init=aux.h)
            du0, dp, dv, status = r.du0, r.dp, r.dvars, r.status
        return Gradients(du0, dp, dv, status=status)

    # ----------------------------------------------- the record chunk by chunk
    # The forward dense output in one record costs buffers of `max_steps`
    # entries, allocated and copied whatever the steps taken: on a 300-state
    # problem of 23 steps, InterpolatingAdjoint took 20 ms at max_steps 100 and
    # 184 ms at 10,000. Instead the forward pass runs in chunks of C iterations
    # (`discrete.chunking`, C = ceil(sqrt(max_steps)) by default) keeping the loop
    # state at each chunk's start, as `DiscreteAdjoint` does; the backward pass
    # re-runs one chunk at a time with a record of C entries (the very steps of
    # the forward solve) and integrates the adjoint across that chunk, from the
    # last to the first. Cost: one more forward evaluation of each step, and a
    # backward solve that stops at each chunk boundary.

    def _forward_chunks(self, spec, u0, ts, t0, t1, p) -> ForwardPass:
        stepper = Stepper(spec.rhs(p), u0, t0, t1, spec.method, spec.options, saveat=ts)
        res, starts, count = run_in_chunks(stepper, u0, *chunking(spec.options.max_steps, None))
        return ForwardPass(res.ys, res.stats, res.status, _ChunkedAux(starts, count))

    def _backward_chunks(self, spec, u0, ts, t0, t1, p, variables, aux: _ChunkedAux, g_u):
        _, size = chunking(spec.options.max_steps, None)
        a0, acc0 = _chained_start(u0, ts, t1, p, variables, g_u)

        def chunk(j, a, acc, status):
            # gather, not a slice: under tf.vectorized_map (an ensemble's backward pass) j may differ per sample.
            start = tf.nest.map_structure(lambda b: tf.gather(b, j), aux.starts)
            stepper = Stepper(spec.rhs(p), u0, t0, t1, spec.method, spec.options, saveat=ts, record=True)
            s = stepper.run(stepper.resume(start, record_steps=size), size)
            r = backward_solve(spec, self, u0, ts, start.t, s.t, p, variables, s.y[0], stepper.dense_record(s), g_u,
                               a_init=a, acc_init=(list(acc[0]), list(acc[1])), h_init=s.h)
            return j - 1, r.du0, (list(r.dp), list(r.dvars)), first_status(status, r.status)

        _, a, acc, status = tf.while_loop(lambda j, *_: j >= 0, chunk,
                                          (aux.count - 1, a0, acc0, tf.constant(0, tf.int32)),
                                          maximum_iterations=aux.starts.t.shape[0])
        return a, acc[0], acc[1], status

    def _backward_segments(self, spec, u0, ts, t0, t1, p, variables, cp, g_u):
        k = self.checkpoint_count()
        a0, acc0 = _chained_start(u0, ts, t1, p, variables, g_u)

        def segment(i, a, acc, first):
            # gather, not a slice: under tf.vectorized_map (an ensemble's backward pass) i may differ per sample.
            cut0, cut1 = tf.gather(cp.cuts, i), tf.gather(cp.cuts, i + 1)
            dt = spec.options.dt if first else tf.gather(cp.steps, i)
            res, _ = solve_segment(spec, tf.gather(cp.states, i), dt, cut0, cut1, ts, p, record=True,
                                   max_steps=segment_cap(spec, k))
            r = backward_solve(spec, self, u0, ts, cut0, cut1, p, variables, res.y1, res.record, g_u,
                               a_init=a, acc_init=acc, h_init=res.h)
            status = tf.where(tf.equal(res.status, 0), r.status, res.status)
            return r.du0, (list(r.dp), list(r.dvars)), status

        a, acc, status = backward_sweep(k, segment, a0, acc0)
        return a, acc[0], acc[1], status


def _chained_start(u0, ts, t1, p, variables, g_u):
    """``(a, (dp, dvars))`` at ``t1`` for a backward pass chained over pieces: the loss gradient there, zeros."""
    at_end = tf.reshape(tf.cast(tf.equal(ts, t1), u0.dtype), [-1] + [1] * u0.shape.rank)
    acc0 = ([tf.zeros_like(x) for x in Params(p).float_leaves], [tf.zeros_like(v) for v in variables])
    return tf.reduce_sum(at_end * g_u, axis=0), acc0


def _backward_options(spec, alg: ContinuousAdjoint, h_init):
    over = {}
    if alg.rtol is not None:
        over["rtol"] = to_dtype(alg.rtol, spec.options.rtol.dtype)
    if alg.atol is not None:
        over["atol"] = to_dtype(alg.atol, spec.options.atol.dtype)
    # The forward solve's last proposed step is a good first step for the
    # adjoint (the linearised dynamics share its time scales) and saves the
    # automatic start's cautious ramp-up; without it, the automatic choice.
    over["dt"] = None if h_init is None else tf.abs(h_init)
    return over


def _backward_method(method, y0, u0):
    """The method of the backward solve: a block-diagonal ``linsolve`` only where the backward state is the adjoint alone.

    With ``linsolve=BlockDiagonalLU(b)`` the forward Jacobian ``J`` is block
    diagonal, and so is the adjoint's ``-J^T`` (`QuadratureAdjoint`, whose
    backward state is ``a`` alone). A backward state that carries more (the
    parameter integrals of `InterpolatingAdjoint`, the state of
    `BacksolveAdjoint`) has a Jacobian with rows outside the blocks: it is
    solved with the dense LU instead, as the order of a Rosenbrock method needs
    the exact Jacobian.
    """
    if getattr(method, "block_size", None) is None:
        return method
    size = sum(int(np.prod(x.shape, dtype=np.int64)) for x in tf.nest.flatten(y0))
    if size == int(np.prod(u0.shape, dtype=np.int64)):
        return method
    return dataclasses.replace(method, linsolve=None)


def backward_solve(spec, alg: ContinuousAdjoint, u0, ts, t0, t1, p, variables, u1, record, g_u, g_cont=None, *,
                   a_init=None, acc_init=None, h_init=None) -> AdjointResult:
    """Solve the adjoint of ``alg`` backwards from ``t1`` to ``t0``.

    Args:
      u0: the state at ``t0`` (shape and dtype reference).
      ts: ``[T]`` save times; only those in ``(t0, t1]`` enter as jumps.
      u1: forward state at ``t1``; record: forward dense output or None.
      g_u: ``[T, *u.shape]`` loss gradient at the save times.
      g_cont: optional running cost ``g(t, u, p)`` (scalar) of ``int g dt``.
      a_init, acc_init: adjoint at ``t1`` and ``(dp, dvars)`` accumulated so
        far (chaining checkpointed segments); default the loss gradient at
        ``t1`` and zeros.
      h_init: first step (e.g. the forward solve's last proposed step).
    """
    dtype = u0.dtype
    params = Params(p)
    direction = tf.where(t1 >= t0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype))
    prob = AdjointProblem(spec, p, params, list(variables), ts, g_u, g_cont, record, u1, direction)
    a = prob.g_at(t1) if a_init is None else a_init
    if acc_init is None:
        acc_init = ([tf.zeros_like(x) for x in params.float_leaves], [tf.zeros_like(v) for v in variables])
    y0, include = alg.adjoint_state(prob, a, list(acc_init[0]), list(acc_init[1]))
    method = _backward_method(alg.alg or spec.method, y0, u0)
    rhs = graph_if_eager(lambda t, y: alg.adjoint_rhs(prob, t, y))
    if spec.jac is not None and alg.adjoint_jac is not None and method.stiff:
        # da/dt = -J^T a: the backward Newton / W matrix from the user's J, transposed.
        rhs = WithJacobian(rhs, graph_if_eager(lambda t, y: alg.adjoint_jac(prob, t, y)))
    loop_args = dict(tstops=tf.reverse(ts, [0]), jump=lambda t, y: alg.adjoint_jump(prob, t, y), include_in_norm=include)
    consumed = None
    if alg.records_backward:
        # The backward dense output is read once, step by step: recorded and
        # consumed one chunk of ceil(sqrt(max_steps)) steps at a time, not in
        # buffers of max_steps entries (see `ContinuousAdjoint._forward_chunks`).
        options = spec.options.replace(**_backward_options(spec, alg, h_init))
        stepper = Stepper(rhs, y0, t1, t0, method, options, record=True, **loop_args)
        _, size = chunking(options.max_steps, None)
        res, consumed = stepper.run_recording_chunks(
            stepper.start(y0, with_record=False), size,
            lambda acc, rec: alg.consume_backward(prob, method, acc, rec), alg.consume_init(prob, acc_init))
    else:
        res = spec.integrate(rhs, y0, t1, t0, method=method, **loop_args, **_backward_options(spec, alg, h_init))
    du0, dp, dv, extra_nfe = alg.adjoint_result(prob, res, method, t0, t1, consumed)
    stats = dict(res.stats)
    stats["nfe"] = stats["nfe"] + extra_nfe
    nan = lambda x: nan_if_failed(res.status, x)  # noqa: E731
    return AdjointResult(nan(du0), [nan(x) for x in dp], [nan(x) for x in dv], stats, res.status)
