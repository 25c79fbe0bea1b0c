"""`QuadratureAdjoint`: the adjoint ``a(t)`` alone, ``dL/dp`` by quadrature afterwards.

The backward solve integrates only ``a`` (the smallest backward state, so
step-size control sees only the adjoint) and records its dense output; the
parameter gradient ``int a^T df/dp dt`` is then a Gauss--Legendre quadrature
over the backward steps, with ``a`` and ``u`` from the two dense outputs.

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
    parameter integrals out of the backward solve saves work. Caution: both
    dense outputs are kept (forward and backward, ``max_steps`` entries each),
    and the quadrature is only as accurate as the two interpolants.

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

    def adjoint_result(self, prob, res, method, t0, t1):
        dp, dv, nfe = _quadrature(prob, method, res.record)
        return res.y1[0], dp, dv, nfe


def _quadrature(prob, method_b, rec_b):
    """``int_{t0}^{t1} -a^T df/dp dt`` by Gauss--Legendre on each backward step."""
    spec = prob.spec
    n_nodes = max(2, (spec.method.order + 2) // 2)
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    dtype = rec_b.h.dtype
    x = (x + 1.0) / 2.0
    w = w / 2.0
    acc0 = [tf.zeros_like(v) for v in prob.params.float_leaves] + [tf.zeros_like(v) for v in prob.variables]

    def body(j, acc):
        t_j = rec_b.t[j]
        h_j = rec_b.h[j]
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
        (tf.constant(0, tf.int32), acc0),
        maximum_iterations=rec_b.h.shape[0],
    )
    n_p = len(prob.params.float_leaves)
    return acc[:n_p], acc[n_p:], rec_b.count * n_nodes
