"""`BacksolveAdjoint`: the continuous adjoint that re-integrates the state backwards.

The backward state is ``(u, a, dL/dp, dL/dvars)``: ``u`` is solved backwards
from ``u(t1)`` alongside the adjoint (Chen et al. 2018, Algorithm 2), so no
forward trajectory is kept: memory is O(1) in the number of steps.

References: Chen, Rubanova, Bettencourt & Duvenaud, NeurIPS 2018, Alg. 2.
"""

from __future__ import annotations

import dataclasses

from .adjoint_problem import ContinuousAdjoint

__all__ = ["BacksolveAdjoint"]


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(ContinuousAdjoint):
    """Continuous adjoint by re-integrating the state backwards (Chen et al. 2018, Alg. 2).

    When to use: long solves of non-dissipative systems where memory matters
    (O(1) in the number of steps). Caution: the backward state solve is
    unstable for dissipative, stiff or chaotic systems (e.g. Lorenz, stiff
    decay): the recomputed ``u`` drifts away from the forward one and the
    gradient can then be badly wrong; SciMLSensitivity warns the same.
    `InterpolatingAdjoint` is the stable choice.

    Args: see `ContinuousAdjoint` (``rtol``, ``atol``, ``alg``, ``seminorm``).
    """

    records_forward = False

    def adjoint_state(self, prob, a, gp, gv):
        fp, fv = self.gradient_norm_flags(gp, gv)
        return (prob.u1, a, gp, gv), (True, True, fp, fv)

    def adjoint_rhs(self, prob, t, y):
        u, a, _, _ = y
        da, dgp, dgv = prob.terms(t, u, a)
        return prob.spec.f(t, u, prob.p), da, dgp, dgv

    def adjoint_jump(self, prob, t, y):
        u, a, gp, gv = y
        return u, a + prob.g_at(t), gp, gv

    def adjoint_result(self, prob, res, method, t0, t1, consumed=None):
        _, du0, dp, dv = res.y1
        return du0, dp, dv, 0
