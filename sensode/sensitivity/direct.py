"""Entry points for ODE sensitivities: the method choice and direct interfaces.

`solve(prob, alg, sensealg=...)` calls `differentiable_solve` here; users who
want sensitivities rather than gradients call `forward_sensitivities` or
`adjoint_sensitivities`.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf
from tensorflow.python.eager import record as _tape_record

from .continuous import ContinuousAdjointMethod, backward_solve
from ..derivatives import find_variables, p_leaves
from .discrete import CheckpointedDiscreteAdjoint
from .forward import ForwardSensitivityMethod, forward_solve
from .algorithms import (
    BacksolveAdjoint,
    DiscreteAdjoint,
    ForwardSensitivity,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    SensitivityAlgorithm,
)
from .base import Spec, differentiable, save_time_gradients
from .choice import default_sensealg

__all__ = [
    "default_sensealg",
    "differentiable_solve",
    "forward_sensitivities",
    "adjoint_sensitivities",
    "ForwardSensitivityResult",
    "AdjointSensitivityResult",
]

def _method(sensealg):
    if isinstance(sensealg, ForwardSensitivity):
        return ForwardSensitivityMethod()
    if isinstance(sensealg, (BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint)):
        return ContinuousAdjointMethod(sensealg)
    if isinstance(sensealg, DiscreteAdjoint):
        return CheckpointedDiscreteAdjoint(sensealg.checkpoints)
    raise TypeError(f"`sensealg` must be a sensode sensitivity algorithm, got {sensealg!r}")


class _OnDemand:
    """Run a method's own forward pass only when a gradient is requested.

    The forward pass is the plain solve; the backward pass first repeats the
    solve the way the method needs it (with sensitivities, or recording the
    dense output) and then runs the method's backward pass. Used for
    ``sensealg=None``, so that a solve nobody differentiates costs no more
    than the plain loop (inside `tf.function` that cannot be known in advance).
    """

    def __init__(self, method):
        self.method = method

    def forward(self, spec, u0, ts, t0, t1, p, variables):
        res = spec.integrate(lambda t, u: spec.f(t, u, p), u0, t0, t1, saveat=ts)
        return res.ys, res.stats, res.status, None

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u):
        _, _, _, aux = self.method.forward(spec, u0, ts, t0, t1, p, variables)
        return self.method.backward(spec, u0, ts, t0, t1, p, variables, aux, g_u)


def differentiable_solve(prob, spec: Spec, sensealg, u0, ts, t0, t1):
    """Forward solve whose gradient is computed by ``sensealg``.

    Returns ``(u_saved, stats, status)``. ``DiscreteAdjoint()`` without
    checkpoints runs the plain loop, which TensorFlow differentiates step by
    step. ``sensealg=None`` runs the plain loop forward and, only if a gradient
    is requested, the method `default_sensealg` picks (see `_OnDemand`).
    """
    if sensealg is None:
        if tf.executing_eagerly() and not _tape_record.could_possibly_record():
            sensealg = DiscreteAdjoint()  # nothing will differentiate this solve
        else:
            chosen, _ = default_sensealg(prob)
            return differentiable(spec, _OnDemand(_method(chosen)), u0, ts, t0, t1, prob.p)
    if isinstance(sensealg, DiscreteAdjoint) and sensealg.checkpoints is None:
        res = spec.integrate(lambda t, u: spec.f(t, u, prob.p), u0, t0, t1, saveat=ts)
        return res.ys, res.stats, res.status
    return differentiable(spec, _method(sensealg), u0, ts, t0, t1, prob.p)


class ForwardSensitivityResult(NamedTuple):
    """``t`` ``[T]``, ``u`` ``[T, *u.shape]``, ``du_du0`` ``[T, *u.shape, *u0.shape]``,
    ``du_dp`` (nest like ``p``; each ``[T, *u.shape, *leaf.shape]``, None for
    non-floating leaves), ``du_dvars`` (list over the variables ``f`` reads),
    ``variables``, ``stats`` and ``status``."""

    t: tf.Tensor
    u: tf.Tensor
    du_du0: tf.Tensor
    du_dp: object
    du_dvars: list
    variables: list
    stats: dict
    status: tf.Tensor


def _move_directions_last(x, u_rank):
    """``[T, M_block..., *u]`` -> ``[T, *u, M_block...]``."""
    rank = x.shape.rank
    m_rank = rank - 1 - u_rank
    perm = [0] + list(range(1 + m_rank, rank)) + list(range(1, 1 + m_rank))
    return tf.transpose(x, perm)


def forward_sensitivities(prob, spec: Spec, ts, t0, t1) -> ForwardSensitivityResult:
    """Sensitivities ``du/du0`` and ``du/dp`` at the save times (see `sensode.forward_sensitivities`)."""
    u0 = prob.u0
    variables = find_variables(spec.f, t0, u0, prob.p)
    res, dirs = forward_solve(spec, u0, ts, t0, t1, prob.p, variables)
    u_saved, s_saved = res.ys  # [T, M, *u]
    s_m_first = tf.transpose(s_saved, [1, 0] + list(range(2, s_saved.shape.rank)))  # [M, T, *u]
    du0, dp, dv = _split_blocks(s_m_first, dirs, u0, prob.p, variables)
    rank = u0.shape.rank
    du_du0 = _move_directions_last(du0, rank)
    du_dp = [None if g is None else _move_directions_last(g, rank) for g in dp]
    du_dv = [_move_directions_last(g, rank) for g in dv]
    du_dp = tf.nest.pack_sequence_as(prob.p, du_dp) if prob.p is not None else None
    return ForwardSensitivityResult(ts, u_saved, du_du0, du_dp, du_dv, variables, res.stats, res.status)


def _split_blocks(s, dirs, u0, p, variables):
    """``[M, T, *u]`` -> per-input blocks ``[T, *input_shape, *u]``."""
    sizes = [dirs.n_u0] + dirs.p_sizes + dirs.v_sizes
    parts = tf.split(s, sizes, axis=0)
    tail = s.shape[1:].as_list()

    def shaped(block, shape):
        x = tf.reshape(block, list(shape) + tail)  # [*in, T, *u]
        n_in = len(shape)
        return tf.transpose(x, [n_in] + list(range(n_in)) + list(range(n_in + 1, x.shape.rank)))

    leaves = p_leaves(p)
    du0 = shaped(parts[0], u0.shape.as_list())
    dp = [shaped(b, leaf.shape.as_list()) if size else None for b, size, leaf in zip(parts[1 : 1 + len(leaves)], dirs.p_sizes, leaves)]
    dv = [shaped(b, v.shape.as_list()) for b, v in zip(parts[1 + len(leaves) :], variables)]
    return du0, dp, dv


class AdjointSensitivityResult(NamedTuple):
    """Gradients of ``L = sum_i <dgdu_i, u(ts_i)> + int g(t, u, p) dt``.

    ``du0`` (shape of ``u0``), ``dp`` (nest like ``p``), ``dvars`` (list over
    ``variables``), ``dt0``, ``dt1`` and ``dts`` (``[T]``) scalars / vectors,
    and the backward solve's ``stats`` and ``status``."""

    du0: tf.Tensor
    dp: object
    dvars: list
    variables: list
    dt0: tf.Tensor
    dt1: tf.Tensor
    dts: tf.Tensor
    stats: dict
    status: tf.Tensor


def adjoint_sensitivities(sol, spec: Spec, sensealg, dgdu_discrete=None, g=None) -> AdjointSensitivityResult:
    """Continuous adjoint of a solved problem (see `sensode.adjoint_sensitivities`)."""
    prob = sol.prob
    u0 = prob.u0
    p = prob.p
    ts = sol.t
    dtype = u0.dtype
    t0 = tf.cast(prob.tspan[0], dtype)
    t1 = tf.cast(prob.tspan[1], dtype)
    variables = find_variables(spec.f, t0, u0, p)
    g_u = tf.zeros_like(sol.u) if dgdu_discrete is None else tf.cast(dgdu_discrete, dtype)
    record = None
    u1 = None
    if isinstance(sensealg, BacksolveAdjoint):
        res = spec.integrate(lambda t, u: spec.f(t, u, p), u0, t0, t1, saveat=None)
        u1 = res.y1
    else:
        res = spec.integrate(lambda t, u: spec.f(t, u, p), u0, t0, t1, saveat=None, record=True)
        record, u1 = res.record, res.y1
    du0, dp, dv, stats, status = backward_solve(
        spec, sensealg, u0, ts, t0, t1, p, variables, u1, record, g_u, g, h_init=res.h
    )
    dts = save_time_gradients(spec.f, ts, sol.u, g_u, p)
    # Save times equal to t0 or t1 move with them (as with saveat=None).
    dt0 = -tf.reduce_sum(du0 * spec.f(t0, u0, p)) + tf.reduce_sum(tf.where(tf.equal(ts, t0), dts, 0.0))
    dt1 = tf.reduce_sum(tf.where(tf.equal(ts, t1), dts, 0.0))
    if g is not None:  # the running cost's end points move with t0 and t1
        dt0 = dt0 - tf.cast(g(t0, u0, p), dtype)
        dt1 = dt1 + tf.cast(g(t1, u1, p), dtype)
    dp_nest = tf.nest.pack_sequence_as(p, dp) if p is not None else None
    return AdjointSensitivityResult(du0, dp_nest, dv, variables, dt0, dt1, dts, stats, status)
