"""Sensitivities rather than gradients: the computations behind
`sensode.forward_sensitivities` (``du/du0``, ``du/dp`` at the save times) and
`sensode.adjoint_sensitivities` (a continuous adjoint of a solved problem
for a given loss gradient and running cost).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from ..params import Params, find_variables
from .adjoint_problem import ContinuousAdjoint, backward_solve
from .base import Spec, save_time_gradients
from .forward import forward_solve

__all__ = [
    "forward_sensitivities",
    "adjoint_sensitivities",
    "ForwardSensitivityResult",
    "AdjointSensitivityResult",
]


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
    du_dp = Params(prob.p).as_nest([_move_directions_last(g, rank) for g in dp])
    du_dv = [_move_directions_last(g, rank) for g in dv]
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

    leaves = Params(p).float_leaves
    du0 = shaped(parts[0], u0.shape.as_list())
    dp = [shaped(b, leaf.shape.as_list()) for b, leaf in zip(parts[1 : 1 + len(leaves)], leaves)]
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


def adjoint_sensitivities(sol, spec: Spec, sensealg: ContinuousAdjoint, dgdu_discrete=None, g=None) -> AdjointSensitivityResult:
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
    res = spec.solve_plain(u0, None, t0, t1, p, record=sensealg.records_forward)
    u1 = res.y1
    r = backward_solve(spec, sensealg, u0, ts, t0, t1, p, variables, u1, res.record, g_u, g, h_init=res.h)
    du0, dv, stats, status = r.du0, r.dvars, r.stats, r.status
    dts = save_time_gradients(spec.f, ts, sol.u, g_u, p)
    # Save times equal to t0 or t1 move with them (as with saveat=None).
    dt0 = -tf.reduce_sum(du0 * spec.f(t0, u0, p)) + tf.reduce_sum(tf.where(tf.equal(ts, t0), dts, 0.0))
    dt1 = tf.reduce_sum(tf.where(tf.equal(ts, t1), dts, 0.0))
    if g is not None:  # the running cost's end points move with t0 and t1
        dt0 = dt0 - tf.cast(g(t0, u0, p), dtype)
        dt1 = dt1 + tf.cast(g(t1, u1, p), dtype)
    return AdjointSensitivityResult(du0, Params(p).as_nest(r.dp), dv, variables, dt0, dt1, dts, stats, status)
