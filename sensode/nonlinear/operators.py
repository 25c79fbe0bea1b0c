"""Linear operators, solve results and the solver interface shared by `lu` and `krylov`.

See `sensode.nonlinear.linsolve` (the public module) for the design.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["LinearSolveResult", "JacobianOperator", "MatrixOperator", "LinearSolver"]

class LinearSolveResult(NamedTuple):
    """What a linear solve returns.

    Attributes:
      x: ``[B, n]`` (or ``[B, n, k]`` for ``k`` right-hand sides) solution.
      converged: ``[B]`` bool; for `LU`, "not singular and finite"; for the
        Krylov solvers, "residual below tolerance".
      iterations: scalar ``int32`` (0 for `LU`).
      residual_norm: ``[B]`` 2-norm of ``b - A x`` (the Krylov recurrence's
        value; ``0`` for a regular `LU` solve, ``inf`` for a singular one).
    """

    x: tf.Tensor
    converged: tf.Tensor
    iterations: tf.Tensor
    residual_norm: tf.Tensor


# --------------------------------------------------------------------------- operators


class JacobianOperator:
    """The Jacobian ``J = d fn / d u`` of a row-wise map at a point, as products.

    Args:
      fn: ``fn(u) -> r`` mapping ``[B, n] -> [B, n]`` where row ``b`` of the
        output depends only on row ``b`` of the input (independent systems).
      u: ``[B, n]`` point of linearisation (treated as a constant).
    """

    def __init__(self, fn: Callable, u: tf.Tensor):
        self.fn = fn
        self.u = tf.stop_gradient(u)

    @property
    def dtype(self):
        return self.u.dtype

    def mv(self, v):
        """``J v``: one forward-mode pass (JVP)."""
        with tf.autodiff.ForwardAccumulator(self.u, v) as acc:
            r = self.fn(self.u)
        out = acc.jvp(r, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out

    def rmv(self, w):
        """``J^T w``: one reverse-mode pass (VJP)."""
        with tf.GradientTape() as tape:
            tape.watch(self.u)
            r = self.fn(self.u)
        return tape.gradient(r, self.u, output_gradients=w, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def dense(self):
        """``[B, n, n]`` Jacobian, one block per system (`batch_jacobian`)."""
        with tf.GradientTape() as tape:
            tape.watch(self.u)
            r = self.fn(self.u)
        return tape.batch_jacobian(r, self.u, unconnected_gradients=tf.UnconnectedGradients.ZERO)


class MatrixOperator:
    """An explicit ``[B, n, n]`` matrix as an operator (tests, small dense systems)."""

    def __init__(self, a: tf.Tensor):
        a = tf.convert_to_tensor(a)
        if a.shape.rank != 3:
            raise ValueError(f"MatrixOperator needs a [B, n, n] matrix, got shape {a.shape}")
        self.a = a

    @property
    def dtype(self):
        return self.a.dtype

    def mv(self, v):
        return tf.linalg.matvec(self.a, v)

    def rmv(self, w):
        return tf.linalg.matvec(self.a, w, transpose_a=True)

    def dense(self):
        return self.a


# --------------------------------------------------------------------------- helpers


def _eps(dtype) -> float:
    return float(np.finfo(dtype.as_numpy_dtype).eps)


def _default_rtol(dtype) -> float:
    # Gradients are only as accurate as the adjoint solve: aim near the
    # dtype's precision (sqrt(eps) would cost half the digits).
    return 1e-10 if dtype == tf.float64 else 1e-5


def _norm(x):
    return tf.norm(x, axis=-1)


def _dot(a, b):
    return tf.reduce_sum(a * b, axis=-1)


def _safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (breakdown of a recurrence)."""
    ok = tf.not_equal(den, 0)
    return tf.where(ok, num / tf.where(ok, den, tf.ones_like(den)), tf.zeros_like(num))


class LinearSolver:
    """Base class. Subclasses implement `solve`."""

    #: True for solvers that factor an explicit matrix (exact up to rounding).
    direct: bool = False

    def solve(self, operator, b, *, transpose: bool = False) -> LinearSolveResult:
        """Solve ``A x = b`` (``transpose=False``) or ``A^T x = b``.

        Args:
          operator: a `JacobianOperator`, `MatrixOperator` or any object with
            ``mv`` / ``rmv`` (and ``dense`` for `LU`).
          b: ``[B, n]`` right-hand side, or ``[B, n, k]`` for ``k`` of them.
          transpose: solve with ``A^T``.

        Returns:
          `LinearSolveResult`.
        """
        raise NotImplementedError

    def _solve_columns(self, single, b):
        """Krylov solvers take one right-hand side; map over ``k`` columns."""
        if b.shape.rank == 2:
            return single(b)
        cols = tf.transpose(b, [2, 0, 1])  # [k, B, n]
        res = tf.map_fn(
            single,
            cols,
            fn_output_signature=LinearSolveResult(
                tf.TensorSpec(b.shape[:2], b.dtype),
                tf.TensorSpec(b.shape[:1], tf.bool),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec(b.shape[:1], b.dtype),
            ),
        )
        return LinearSolveResult(
            x=tf.transpose(res.x, [1, 2, 0]),
            converged=tf.reduce_all(res.converged, axis=0),
            iterations=tf.reduce_max(res.iterations),
            residual_norm=tf.reduce_max(res.residual_norm, axis=0),
        )


# --------------------------------------------------------------------------- LU
