"""Matrix-free solves with ``M = I / (gamma h) - J`` for the stiff methods (``linsolve=GMRES(...)``).

The dense path (`sensode.ode.linear.Factorised`) forms ``J`` and factorises
``M`` once per step. `MatrixFree` never forms ``J``: ``M v = v / (gamma h) -
J v`` is one forward-mode product (JVP) of the flat right-hand side at the
step's start, ``M^T w`` one reverse-mode product (VJP), and every solve is a
Krylov solve from `sensode.linsolve` (`GMRES`, `BiCGStab`, `CG`). Memory and
work per solve are ``O(N)`` per iteration instead of the LU's ``O(N^2)`` and
``O(N^3)``, which pays off for large systems with cheap JVPs (semi-discretised
PDEs); there is no preconditioner yet.

Gradients. A solve is ``x = M^{-1} b`` where ``M`` depends on ``t``, the
state, ``h`` and whatever ``f`` captures. The Krylov iterations run on
stopped inputs and are never differentiated. The solution ``x*`` is returned
as ``S(b - (M x* - stop_gradient(M x*)))``: ``M x*`` is one JVP the tape
records, and ``S`` is an identity on values (its input equals ``b``) whose
gradient is one transposed Krylov solve ``M^T l = x_bar``. The chain rule
gives ``b_bar = l`` and, through the recorded JVP, ``M``'s share ``-l
x*^T``: ``dx = M^{-1} (db - dM x*)``, the exact adjoint of a linear solve
(Giles 2008), with second derivatives of ``f`` only as JVPs of VJPs.

References: Knoll & Keyes, "Jacobian-free Newton--Krylov methods: a survey
of approaches and applications", J. Comput. Phys. 193, 2004; Giles, "An
extended collection of matrix derivative results for forward and reverse
mode automatic differentiation", 2008.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from ..nonlinear.linsolve import CG, GMRES, LU, BiCGStab, BlockDiagonalLU
from .linear import jvp, nan_if_failed

__all__ = ["MatrixFree", "check_linsolve", "KRYLOV_SOLVERS"]

KRYLOV_SOLVERS = (GMRES, BiCGStab, CG)


def check_linsolve(who: str, linsolve):
    """A stiff method's ``linsolve`` option, normalised: None (dense LU), `BlockDiagonalLU` or a Krylov solver instance."""
    if linsolve is None or type(linsolve) is LU:
        return None
    if isinstance(linsolve, KRYLOV_SOLVERS + (BlockDiagonalLU,)):
        return linsolve
    raise ValueError(
        f"{who}: `linsolve` must be None or sensode.linsolve.LU() (dense LU, the default), "
        f"sensode.linsolve.BlockDiagonalLU(block_size) (a block-diagonal Jacobian), or an instance of "
        f"sensode.linsolve.GMRES, BiCGStab or CG (matrix-free Newton--Krylov); got {linsolve!r}"
    )


class _Shifted:
    """``A = inv_gh I - J`` of ``g`` at ``(t, yv)`` as products, ``J = dg/dy`` never formed.

    ``mv`` / ``rmv`` take the Krylov solvers' ``[1, N]`` rows: ``A v`` is one
    forward-mode pass (JVP) of ``g``, ``A^T w`` one reverse-mode pass (VJP)
    of ``g``'s evaluation recorded once, when the operator is built.

    Why recorded then: ``A^T`` is needed in the backward pass (a custom
    gradient), and calling ``g`` there reads any `tf.Variable` it captures
    from inside the gradient of the loop's `tf.while_loop`, which TF (2.21)
    cannot build ("... is in list of internal_captures but not in
    internal_capture_to_output"). Gradients of ops recorded in the forward
    pass only use forward values, which the loop's gradient accumulates as
    usual. The price is one evaluation of ``g`` per step whose result only a
    backward pass uses.
    """

    def __init__(self, g: Callable, t, yv, inv_gh, transposable: bool = True):
        self.g, self.t, self.yv, self.inv_gh = g, t, yv, inv_gh
        if not transposable:
            return
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(yv)
            self._out = g(t, yv)
        self._tape = tape

    @property
    def dtype(self):
        return self.yv.dtype

    def apply(self, v, recorded: bool = False):
        """``A v`` for ``v`` ``[N]``.

        ``recorded``: a tape will differentiate the product (the discrete
        adjoint); under XLA the JVP is then two reverse passes
        (`sensode.ode.linear.jvp`).
        """
        return self.inv_gh * v - jvp(lambda y: self.g(self.t, y), self.yv, v, recorded=recorded)

    def mv(self, v):
        return self.apply(v[0])[None]

    def rmv(self, w):
        jtw = self._tape.gradient(self._out, self.yv, output_gradients=w[0],
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return (self.inv_gh * w[0] - jtw)[None]


class MatrixFree:
    """Solves with ``M = I / (gamma h) - J`` by a Krylov method, ``J = dg/dy`` at ``(t, yv)`` never formed.

    Args:
      solver: a `sensode.linsolve` Krylov solver (`GMRES`, `BiCGStab`, `CG`).
      g: the flat right-hand side ``g(t, v) -> [N]`` (for a forward-sensitivity
        system, the augmented one: its ``M`` is just another operator).
      t, yv: the step's start, scalar and ``[N]``.
      inv_gh: scalar ``1 / (gamma h)``.

    Failures. A solve that does not converge (or whose iterate is not finite)
    returns its last finite iterate and a False flag: `solve` records it and
    `mark_failed` makes the step's proposal NaN at the very end, so the loop
    rejects the step while every value the discrete adjoint differentiates
    stays finite (a rejected step's zero cotangent times a NaN would be NaN).
    A transposed solve that does not converge gives a NaN gradient.
    """

    def __init__(self, solver, g: Callable, t, yv, inv_gh):
        self.solver = solver
        self.op = _Shifted(g, t, yv, inv_gh, transposable=False)
        self.frozen = _Shifted(g, tf.stop_gradient(t), tf.stop_gradient(yv), tf.stop_gradient(inv_gh))
        self.flags: list = []
        self.iterations: list = []

    def solve_checked(self, b):
        """``(x, converged, iterations)`` for ``b`` ``[N]``; records nothing (safe inside loops)."""
        if b.shape.rank != 1:
            raise ValueError(f"MatrixFree.solve takes one right-hand side [N], got shape {b.shape}")
        solver, frozen = self.solver, self.frozen
        res = solver.solve(frozen, tf.stop_gradient(b)[None])
        x_raw = res.x[0]
        finite = tf.math.is_finite(x_raw)
        ok = res.converged[0] & tf.reduce_all(finite)
        x_star = tf.stop_gradient(tf.where(finite, x_raw, tf.zeros_like(x_raw)))
        mx = self.op.apply(x_star, recorded=True)  # recorded: carries dM x* to the tape

        # The forward reads no variable (graph-mode custom_gradient would ask
        # for their gradients); the backward's VJPs may read them.
        @tf.custom_gradient
        def adjoint(rhs):
            def grad(x_bar):
                r = solver.solve(frozen, x_bar[None], transpose=True)
                nan = tf.fill(tf.shape(r.x[0]), tf.constant(np.nan, b.dtype))
                return tf.where(r.converged[0], r.x[0], nan)

            return tf.identity(x_star), grad

        return adjoint(b - (mx - tf.stop_gradient(mx))), ok, res.iterations

    def solve(self, b):
        """``M^{-1} b`` for ``b`` ``[N]``; the convergence flag is kept for `mark_failed`."""
        x, ok, iters = self.solve_checked(b)
        self.flags.append(~ok)
        self.iterations.append(iters)
        return x

    def total_iterations(self):
        """Krylov iterations of the solves so far (int32 scalar)."""
        return tf.add_n(self.iterations) if self.iterations else tf.constant(0, tf.int32)

    def mark_failed(self, values: list) -> list:
        """``values``, NaN if a recorded solve failed (`sensode.ode.linear.nan_if_failed`)."""
        return nan_if_failed(self.flags, values)
