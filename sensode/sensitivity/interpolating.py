"""`InterpolatingAdjoint`: the continuous adjoint reading ``u(t)`` from the forward dense output.

The backward state is ``(a, dL/dp, dL/dvars)``; the forward state at any
time comes from the dense output of the forward steps, recorded chunk by
chunk in the backward pass (`ContinuousAdjoint._backward_chunks`), or with
``checkpoints=k`` of the segment being re-solved.

References: Rackauckas et al., SciMLSensitivity.jl (InterpolatingAdjoint);
Cao, Li, Petzold & Serban, SIAM J. Sci. Comput. 24(3), 2003.
"""

from __future__ import annotations

import dataclasses

from .adjoint_problem import ContinuousAdjoint, adjoint_jac_with_integrals
from .checkpoint import check_checkpoints

__all__ = ["InterpolatingAdjoint"]


@dataclasses.dataclass(frozen=True)
class InterpolatingAdjoint(ContinuousAdjoint):
    """Continuous adjoint that reads the forward state from its dense output.

    When to use: the stable continuous adjoint, the default for many
    parameters (``len(u0) + len(p) > 100``). Memory: by default the forward
    pass keeps the loop state at the start of each chunk of
    ``ceil(sqrt(max_steps))`` iterations, and the backward pass re-runs one
    chunk at a time with a dense record of that many steps (one more forward
    evaluation of each step; cost and memory follow the steps taken, not
    ``max_steps``). ``checkpoints=k`` instead cuts the span at ``k - 1``
    times and re-solves the ``k`` segments (each may take at most
    ``2 ceil(max_steps / k)`` steps, and may step differently from the uncut solve).

    Args:
      checkpoints: None (chunks, above), or the number of time segments re-solved in the backward pass.
      rtol, atol, alg, seminorm: see `ContinuousAdjoint`.
    """

    checkpoints: int | None = None

    def __post_init__(self):
        check_checkpoints(self.checkpoints)

    def checkpoint_count(self):
        return self.checkpoints

    def adjoint_state(self, prob, a, gp, gv):
        fp, fv = self.gradient_norm_flags(gp, gv)
        return (a, gp, gv), (True, fp, fv)

    def adjoint_rhs(self, prob, t, y):
        return prob.terms(t, prob.state_at(t), y[0])

    def adjoint_jac(self, prob, t, y):
        return adjoint_jac_with_integrals(prob, t, prob.state_at(t), y)

    def adjoint_jump(self, prob, t, y):
        return (y[0] + prob.g_at(t),) + tuple(y[1:])

    def adjoint_result(self, prob, res, method, t0, t1, consumed=None):
        du0, dp, dv = res.y1
        return du0, dp, dv, 0
