"""Linear solvers as pluggable objects: one object, both ``A x = b`` and ``A^T x = b``.

A solver sees the matrix only through an *operator*: ``mv(v) = A v``,
``rmv(w) = A^T w`` and, for the dense `LU`, ``dense() = A``. The matrix-free
solvers (`GMRES`, `CG`, `BiCGStab`) call only ``mv`` / ``rmv``, so with a
`JacobianOperator` they never form a Jacobian: each product is one
forward-mode (JVP) or reverse-mode (VJP) pass through the residual.

Shapes. Every operator acts on a batch of independent systems: vectors are
``[B, n]`` and a dense operator is ``[B, n, n]``; inner products, norms and
convergence are per row. A solve returns a `LinearSolveResult` whose
``converged`` flag is per row, as a tensor: nothing raises and nothing leaves
the graph, so every solver runs eagerly, in `tf.function` and under XLA
(``jit_compile=True``). Loops are `tf.while_loop`s with static
``maximum_iterations``.

This module is the numerics layer: the nonlinear solvers, the implicit
adjoint and (later) the stiff ODE methods all take a solver from here.
"""

from .krylov import CG, GMRES, BiCGStab
from .lu import LU, BlockDiagonalLU, LUFactors
from .operators import JacobianOperator, LinearSolver, LinearSolveResult, MatrixOperator

__all__ = [
    "LinearSolveResult",
    "JacobianOperator",
    "MatrixOperator",
    "LinearSolver",
    "LU",
    "LUFactors",
    "BlockDiagonalLU",
    "GMRES",
    "CG",
    "BiCGStab",
]
