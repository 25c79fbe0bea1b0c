"""`QuadratureAdjoint`: the adjoint ``a(t)`` alone, ``dL/dp`` by quadrature afterwards.

The backward solve integrates only ``a`` (the smallest backward state, so
step-size control sees only the adjoint); the parameter gradient
``int a^T df/dp dt`` is a Gauss--Legendre quadrature over the backward steps,
with ``a`` and ``u`` from the two dense outputs, accumulated one recorded
chunk of backward steps at a time.

References: Rackauckas et al., SciMLSensitivity.jl (QuadratureAdjoint);
Kim et al., "Stiff neural ordinary differential equations", Chaos 31, 2021.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from ..ode import dense
from .adjoint_problem import ContinuousAdjoint, minus_jac_transposed

__all__ = ["QuadratureAdjoint"]


@dataclasses.dataclass(frozen=True)
class QuadratureAdjoint(ContinuousAdjoint):
    """Continuous adjoint for ``a(t)`` only; ``dL/dp`` by quadrature of ``-a^T df/dp``.

    When to use: many parameters and a cheap vector field, where keeping the
    parameter integrals out of the backward solve saves work. Caution: the
    quadrature is only as accurate as the two interpolants. Memory: both
    dense outputs are recorded one chunk of ``ceil(sqrt(max_steps))`` steps at
    a time (the forward one re-run chunk by chunk in the backward pass, as
    `InterpolatingAdjoint` does; the backward one consumed by the quadrature
    as each chunk completes), so cost follows the steps taken, not ``max_steps``.

    Args: see `ContinuousAdjoint` (``rtol``, ``atol``, ``alg``; ``seminorm``
    has no effect: the parameter integrals are never in the backward solve).
    """

    records_backward = True

    def adjoint_state(self, prob, a, gp, gv):
        return (a,), (True,)

    def adjoint_rhs(self, prob, t, y):
        da, _, _ = prob.terms(t, prob.state_at(t), y[0])
        return (da,)

    def adjoint_jac(self, prob, t, y):
        return minus_jac_transposed(prob, t, prob.state_at(t))

    def adjoint_jump(self, prob, t, y):
        return (y[0] + prob.g_at(t),)

    def adjoint_result(self, prob, res, method, t0, t1, consumed=None):
        acc, nfe = consumed
        n_p = len(prob.params.float_leaves)
        return res.y1[0], acc[:n_p], acc[n_p:], nfe

    def consume_init(self, prob, acc_init):
        return list(acc_init[0]) + list(acc_init[1]), tf.constant(0, tf.int32)

    def consume_backward(self, prob, method, acc, record):
        acc, nfe = acc
        acc, more = _quadrature(prob, method, record, acc)
        return acc, nfe + more


def _quadrature(prob, method_b, rec_b, acc0):
    """``acc0 + int -a^T df/dp dt`` over the steps of ``rec_b``, by Gauss--Legendre on each backward step."""
    spec = prob.spec
    n_nodes = max(2, (spec.method.order + 2) // 2)
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    dtype = rec_b.h.dtype
    x = (x + 1.0) / 2.0
    w = w / 2.0

    def body(j, acc):
        t_j = tf.gather(rec_b.t, j)  # gather, not a slice: j may differ per vectorised sample
        h_j = tf.gather(rec_b.h, j)
        nodes = t_j + h_j * tf.constant(x, dtype)  # [K]
        a_nodes = dense.interpolate(method_b, rec_b, nodes, -prob.direction)[0]
        u_nodes = dense.interpolate(spec.method, prob.record, nodes, prob.direction)[0]
        out = list(acc)
        for k in range(n_nodes):
            _, dgp, dgv = prob.terms(nodes[k], u_nodes[k], a_nodes[k])
            # dgp = -a^T f_p; the backward step has h_j of the opposite sign.
            out = [o + (h_j * float(w[k])) * g for o, g in zip(out, dgp + dgv)]
        return j + 1, out

    _, acc = tf.while_loop(
        lambda j, acc: j < rec_b.count,
        body,
        (tf.constant(0, tf.int32), list(acc0)),
        maximum_iterations=rec_b.h.shape[0],
    )
    return acc, rec_b.count * n_nodes
