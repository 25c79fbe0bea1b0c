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

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # XLA-context query, see `LU`

__all__ = [
    "LinearSolveResult",
    "JacobianOperator",
    "MatrixOperator",
    "LinearSolver",
    "LU",
    "LUFactors",
    "GMRES",
    "CG",
    "BiCGStab",
]


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


def _lu_xla(a):
    """Partial-pivoting LU in a `tf.while_loop` (TF has no XLA kernel for ``Lu`` on CPU).

    Returns ``(lu, perm)`` with the convention of `tf.linalg.lu`:
    ``a[..., perm, :] = L U``. Zero pivots are replaced by 1 for the
    elimination; the caller detects them from the diagonal of ``U``.
    """
    n = a.shape[-1]
    rows = tf.range(n)
    perm0 = tf.broadcast_to(rows, tf.shape(a)[:-1])

    def body(k, a, perm):
        col = tf.gather(a, k, axis=-1)  # [B, n]
        cand = tf.where(rows >= k, tf.abs(col), -tf.ones_like(col))
        p = tf.argmax(cand, axis=-1, output_type=tf.int32)  # [B]
        idx = tf.where(rows == k, p[:, None], tf.where(rows == p[:, None], k, rows))
        a = tf.gather(a, idx, batch_dims=1)
        perm = tf.gather(perm, idx, batch_dims=1)
        pivot = tf.gather(tf.gather(a, k, axis=-1), k, axis=-1)  # [B]
        pivot = tf.where(tf.equal(pivot, 0), tf.ones_like(pivot), pivot)
        below = rows > k
        l = tf.where(below, tf.gather(a, k, axis=-1) / pivot[:, None], tf.zeros_like(col))  # [B, n]
        urow = tf.where(below, tf.gather(a, k, axis=-2), tf.zeros_like(col))  # row k right of k
        a = a - l[:, :, None] * urow[:, None, :]
        a = tf.where(below[:, None] & tf.equal(rows, k)[None, :], l[:, :, None], a)
        return k + 1, a, perm

    _, lu, perm = tf.while_loop(lambda k, a, p: k < n, body, (0, a, perm0), maximum_iterations=n)
    return lu, perm


class LUFactors(NamedTuple):
    """`LU.factor`'s result: ``a[perm] = L U`` (packed in ``lu``), per system."""

    lu: tf.Tensor  # [B, n, n]
    perm: tf.Tensor  # [B, n]
    singular: tf.Tensor  # [B] bool: rcond <= LU.rcond_threshold, zero or non-finite A
    rcond: tf.Tensor  # [B] estimate of 1 / cond_1(A), 0 where singular


def _inv_norm1_estimate(solve, zeros):
    """Lower bound on ``||A^{-1}||_1`` per system from a few solves (Hager, Higham).

    ``solve(x, transpose)`` applies ``A^{-1}`` or ``A^{-T}`` to ``[B, n]``;
    ``zeros`` is a ``[B, n]`` template. Hager's iteration on the unit
    1-norm ball for a fixed number of steps (no data-dependent loop), plus
    Higham's alternating-sign vector for the matrices it misses: the estimate
    is usually within a factor 3 of the true norm.
    """
    n = zeros.shape[-1]
    x = zeros + 1.0 / n
    best = tf.zeros_like(zeros[:, 0])
    for _ in range(3):
        y = solve(x, False)
        best = tf.maximum(best, tf.reduce_sum(tf.abs(y), axis=-1))
        z = solve(tf.where(y >= 0, tf.ones_like(y), -tf.ones_like(y)), True)
        x = tf.one_hot(tf.argmax(tf.abs(z), axis=-1), n, dtype=zeros.dtype)
    i = np.arange(n)
    alt = (1.0 + i / max(n - 1, 1)) * np.where(i % 2 == 0, 1.0, -1.0)
    alt_est = 2.0 * tf.reduce_sum(tf.abs(solve(zeros + alt.astype(zeros.dtype.as_numpy_dtype), False)), axis=-1)
    return tf.maximum(best, alt_est / (3.0 * n))


@dataclasses.dataclass(frozen=True)
class LU(LinearSolver):
    """Dense LU with partial pivoting on the explicit (batched) matrix.

    One factorisation serves ``A x = b`` and ``A^T x = b``. Cost ``O(n^3)``
    time and ``O(n^2)`` memory per system: the choice up to ``n`` of a few
    thousand, and whenever the Jacobian is small or badly conditioned (no
    iteration count to tune). The Jacobian is formed with `batch_jacobian`,
    ``n`` reverse passes per system.

    Singularity. TF's ``Lu`` kernel raises on an exactly zero pivot, which a
    graph cannot catch. So we factor ``A_s = A + s I`` with
    ``s = eps * max|A|``, a perturbation of the size of LU's own backward
    error. The test must see through that shift: a singular ``A`` gives
    ``sigma_min(A_s) <= s``, i.e. ``rcond_1(A_s) <~ sqrt(n) eps``, however
    large the pivots the shift leaves. So the test is a condition estimate,
    not a pivot threshold: a system is reported singular
    (``converged = False``, ``x`` NaN) when the estimated reciprocal
    condition number ``1 / (||A_s||_1 ||A_s^{-1}||_1)`` is at most
    `rcond_threshold` ``= 16 sqrt(n) eps`` (numerically singular: a
    relative perturbation of that size makes it singular), when ``A`` is
    zero, or when ``A`` is not finite. The estimate costs a few triangular
    solves, ``O(n^2)``. Under XLA (``jit_compile=True``), where TF has no
    ``Lu`` kernel on CPU, the same factorisation runs as a `tf.while_loop` of
    rank-1 updates: correct but slower for large ``n``.

    References: Golub & Van Loan, Matrix Computations, 4th ed., Sec. 3.4 and
    3.5.4 (condition estimation); N. J. Higham, ACM TOMS 14(4), 1988
    (the 1-norm estimator of LAPACK's ``xGECON``).
    """

    direct = True

    @staticmethod
    def rcond_threshold(n: int, dtype) -> float:
        """Systems with estimated ``rcond_1`` at or below this are singular."""
        return 16.0 * float(np.sqrt(n)) * _eps(dtype)

    def factor(self, a) -> LUFactors:
        """Factor a ``[B, n, n]`` matrix; see `LUFactors`."""
        n = a.shape[-1]
        eps = _eps(a.dtype)
        finite = tf.reduce_all(tf.math.is_finite(a), axis=[-2, -1])
        a = tf.where(finite[:, None, None], a, tf.eye(n, batch_shape=[1], dtype=a.dtype))
        scale = tf.reduce_max(tf.abs(a), axis=[-2, -1])  # [B]
        shift = eps * scale + np.finfo(a.dtype.as_numpy_dtype).tiny
        a_shifted = a + shift[:, None, None] * tf.eye(n, dtype=a.dtype)
        if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
            lu, perm = _lu_xla(a_shifted)
        else:
            lu, perm = tf.linalg.lu(a_shifted)
        no = tf.zeros_like(finite)
        raw = LUFactors(lu, perm, no, tf.ones_like(scale))

        def solve(x, transpose):
            return self._substitute(raw, x[..., None], transpose)[..., 0]

        inv_norm = _inv_norm1_estimate(solve, tf.zeros_like(a[..., 0]))
        a_norm = tf.reduce_max(tf.reduce_sum(tf.abs(a_shifted), axis=-2), axis=-1)
        rcond = 1.0 / (a_norm * inv_norm)  # 0 when a solve overflowed; NaN fails the test below
        singular = ~(rcond > self.rcond_threshold(n, a.dtype)) | ~finite | tf.equal(scale, 0)
        rcond = tf.where(singular, tf.zeros_like(rcond), rcond)
        return LUFactors(lu, perm, singular, rcond)

    @staticmethod
    def _substitute(factors, rhs, transpose):
        """Triangular solves with the packed factors; ``rhs`` is ``[B, n, k]``."""
        lu, perm = factors.lu, factors.perm
        n = lu.shape[-1]
        lower = tf.linalg.band_part(lu, -1, 0) - tf.linalg.diag(tf.linalg.diag_part(lu)) + tf.eye(n, dtype=lu.dtype)
        upper = tf.linalg.band_part(lu, 0, -1)
        if not transpose:  # A[perm] = L U
            y = tf.linalg.triangular_solve(lower, tf.gather(rhs, perm, batch_dims=1), lower=True)
            return tf.linalg.triangular_solve(upper, y, lower=False)
        # A^T = U^T L^T P
        z = tf.linalg.triangular_solve(upper, rhs, lower=False, adjoint=True)
        w = tf.linalg.triangular_solve(lower, z, lower=True, adjoint=True)
        return tf.gather(w, tf.argsort(perm, axis=-1), batch_dims=1)

    def solve_factored(self, factors: LUFactors, b, *, transpose: bool = False) -> LinearSolveResult:
        """Solve with the factors of `factor`; ``b`` is ``[B, n]`` or ``[B, n, k]``.

        A singular system's ``x`` is NaN (there is no solution to report).
        """
        vec = b.shape.rank == 2
        x = self._substitute(factors, b[..., None] if vec else b, transpose)
        x = x[..., 0] if vec else x
        axes = [-1] if vec else [-2, -1]
        ok = ~factors.singular & tf.reduce_all(tf.math.is_finite(x), axis=axes)
        nan = tf.constant(np.nan, b.dtype)
        x = tf.where(tf.reshape(ok, [-1] + [1] * (x.shape.rank - 1)), x, nan)
        zero = tf.zeros_like(ok, dtype=b.dtype)
        return LinearSolveResult(
            x=x,
            converged=ok,
            iterations=tf.constant(0, tf.int32),
            residual_norm=tf.where(ok, zero, tf.constant(np.inf, b.dtype)),
        )

    def solve(self, operator, b, *, transpose: bool = False) -> LinearSolveResult:
        return self.solve_factored(self.factor(operator.dense()), b, transpose=transpose)


# --------------------------------------------------------------------------- Krylov


@dataclasses.dataclass(frozen=True)
class _Krylov(LinearSolver):
    rtol: float | None = None
    atol: float | None = None
    max_iters: int = 500

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise ValueError(f"`{name}` must be a non-negative finite number or None, got {v!r}")
        if isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"`max_iters` must be a positive Python int, got {self.max_iters!r}")

    def _tol(self, b):
        rtol = _default_rtol(b.dtype) if self.rtol is None else self.rtol
        atol = 0.0 if self.atol is None else self.atol
        return tf.maximum(tf.cast(atol, b.dtype), rtol * _norm(b))  # [B]

    def solve(self, operator, b, *, transpose: bool = False) -> LinearSolveResult:
        apply = operator.rmv if transpose else operator.mv
        return self._solve_columns(lambda rhs: self._run(apply, rhs), b)


@dataclasses.dataclass(frozen=True)
class GMRES(_Krylov):
    """Restarted GMRES, matrix-free (Saad & Schultz 1986).

    Minimises ``||b - A x||`` over a Krylov space of dimension ``restart``,
    then restarts from the improved ``x``. Each iteration costs one product
    with ``A`` (or ``A^T``) plus ``O(restart * n)`` work; memory
    ``O(restart * n)`` per system. Arnoldi uses classical Gram--Schmidt
    applied twice (numerically as good as modified Gram--Schmidt, and one
    vectorised product instead of an inner loop); the small least-squares
    problem is solved by QR every iteration, which gives the exact residual
    norm for the stopping test.

    When to use: large sparse or structured Jacobians (``n`` in the
    thousands) that are reasonably conditioned. Caution: no preconditioner
    yet; on badly conditioned systems (e.g. a diffusion operator with a
    fine grid and no reaction term) restarted GMRES can stagnate: raise
    ``restart`` or use `LU`.

    Args:
      rtol: stop when ``||b - A x|| <= max(atol, rtol * ||b||)`` per system.
        Default: 1e-10 (float64) or 1e-5 (float32).
      atol: absolute tolerance, default 0.
      restart: Krylov dimension between restarts.
      max_iters: static bound on the total number of iterations (products).

    References: Y. Saad & M. H. Schultz, SIAM J. Sci. Stat. Comput. 7(3),
    1986; Giraud et al., Numer. Math. 101, 2005 (CGS2).
    """

    restart: int = 30

    def _run(self, apply, b):
        dtype = b.dtype
        m = int(self.restart)
        tol = self._tol(b)
        nb = b.shape[0] if b.shape[0] is not None else tf.shape(b)[0]
        k_idx = tf.range(m)

        def hessenberg(hcols, ncols):
            # hcols: [m, B, m+1] columns of H. Columns k >= ncols (not built,
            # or built after the row converged) become e_{k+1}: rows k+1 > ncols
            # are zero in the right-hand side, so they leave the least-squares
            # solution and residual of the real columns unchanged.
            h = tf.transpose(hcols, [1, 2, 0])  # [B, m+1, m]
            fake = k_idx[None, :] >= ncols[:, None]  # [B, m]
            e = tf.one_hot(k_idx + 1, m + 1, dtype=dtype)  # [m, m+1]
            e = tf.transpose(e)[None]  # [1, m+1, m]
            return tf.where(fake[:, None, :], e, h)

        def lstsq(h, beta):
            q, r = tf.linalg.qr(h, full_matrices=True)  # q [B, m+1, m+1], r [B, m+1, m]
            c = beta[:, None] * q[:, 0, :]  # Q^T (beta e1)
            return q, r, c

        def cycle(x, iters):
            r = b - apply(x)
            beta = _norm(r)
            v0 = _safe_div(r, beta[:, None])
            vs = tf.tensor_scatter_nd_update(tf.zeros([m + 1, nb, b.shape[-1]], dtype), [[0]], v0[None])
            hcols = tf.zeros([m, nb, m + 1], dtype)
            ncols = tf.zeros([nb], tf.int32)
            res = beta
            active = res > tol

            def body(j, vs, hcols, ncols, res, active, iters):
                w = apply(tf.gather(vs, j))
                h = tf.einsum("kbn,bn->bk", vs, w)
                w = w - tf.einsum("bk,kbn->bn", h, vs)
                h2 = tf.einsum("kbn,bn->bk", vs, w)  # reorthogonalise (CGS2)
                w = w - tf.einsum("bk,kbn->bn", h2, vs)
                h = h + h2
                hnext = _norm(w)
                col = h + hnext[:, None] * tf.one_hot(j + 1, m + 1, dtype=dtype)[None]
                col = tf.where(active[:, None], col, tf.zeros_like(col))
                hcols = tf.tensor_scatter_nd_update(hcols, [[j]], col[None])
                vs = tf.tensor_scatter_nd_update(vs, [[j + 1]], _safe_div(w, hnext[:, None])[None])
                ncols = ncols + tf.cast(active, tf.int32)
                _, _, c = lstsq(hessenberg(hcols, ncols), beta)
                res = tf.where(active, tf.abs(c[:, m]), res)
                active = active & (res > tol) & (hnext > 0)
                return j + 1, vs, hcols, ncols, res, active, iters + 1

            def cond(j, vs, hcols, ncols, res, active, iters):
                return tf.reduce_any(active) & (iters < self.max_iters)

            _, vs, hcols, ncols, res, _, iters = tf.while_loop(
                cond, body, (0, vs, hcols, ncols, res, active, iters), maximum_iterations=m
            )
            _, r_fac, c = lstsq(hessenberg(hcols, ncols), beta)
            y = tf.linalg.triangular_solve(r_fac[:, :m, :], c[:, :m, None], lower=False)[..., 0]  # [B, m]
            dx = tf.einsum("bk,kbn->bn", y, vs[:m])
            x_new = x + tf.where(tf.math.is_finite(dx), dx, tf.zeros_like(dx))
            return x_new, iters

        def outer_cond(x, iters, res, moving):
            return tf.reduce_any((res > tol) & moving) & (iters < self.max_iters)

        def outer_body(x, iters, res, moving):
            x, iters = cycle(x, iters)
            new = _norm(b - apply(x))
            # A restart from an unchanged residual rebuilds the same Krylov
            # space: a cycle without progress (J v = 0, a singular or stagnating
            # system) would repeat until max_iters, so such a row stops.
            return x, iters, new, moving & (new < res)

        x0 = tf.zeros_like(b)
        # A cycle does at least one iteration, so max_iters also bounds the cycles.
        x, iters, res, _ = tf.while_loop(
            outer_cond, outer_body, (x0, tf.constant(0, tf.int32), _norm(b), tf.ones_like(tol, tf.bool)),
            maximum_iterations=self.max_iters,
        )
        return LinearSolveResult(x=x, converged=res <= tol, iterations=iters, residual_norm=res)


@dataclasses.dataclass(frozen=True)
class CG(_Krylov):
    """Conjugate gradients, matrix-free, for symmetric positive definite ``A``.

    One product per iteration and ``O(n)`` memory: the cheapest Krylov
    method when it applies. ``transpose=True`` uses ``A^T`` products (equal
    to ``A`` for a symmetric operator). Caution: on a non-symmetric or
    indefinite operator CG does not converge (reported via ``converged``);
    use `GMRES` or `BiCGStab` there.

    References: Hestenes & Stiefel, J. Res. Nat. Bur. Standards 49(6), 1952.
    """

    def _run(self, apply, b):
        tol = self._tol(b)
        x = tf.zeros_like(b)
        r = b
        p = r
        rr = _dot(r, r)

        def body(x, r, p, rr, it):
            ap = apply(p)
            alpha = _safe_div(rr, _dot(p, ap))
            x = x + alpha[:, None] * p
            r = r - alpha[:, None] * ap
            rr_new = _dot(r, r)
            beta = _safe_div(rr_new, rr)
            p = r + beta[:, None] * p
            return x, r, p, rr_new, it + 1

        def cond(x, r, p, rr, it):
            return tf.reduce_any(tf.sqrt(rr) > tol)

        x, r, p, rr, it = tf.while_loop(
            cond, body, (x, r, p, rr, tf.constant(0, tf.int32)), maximum_iterations=self.max_iters
        )
        res = _norm(b - apply(x))  # the recurrence's residual drifts; report the true one
        return LinearSolveResult(x=x, converged=res <= tol, iterations=it, residual_norm=res)


@dataclasses.dataclass(frozen=True)
class BiCGStab(_Krylov):
    """Stabilised bi-conjugate gradients, matrix-free, for general ``A``.

    Two products per iteration and ``O(n)`` memory (no growing basis, unlike
    `GMRES`). Convergence is irregular and can break down (``rho`` or
    ``omega`` near zero); a breakdown stops the iteration and shows in
    ``converged``. Prefer `GMRES` when memory allows.

    References: H. A. van der Vorst, SIAM J. Sci. Stat. Comput. 13(2), 1992.
    """

    def _run(self, apply, b):
        tol = self._tol(b)
        x = tf.zeros_like(b)
        r = b
        rhat = b
        one = tf.ones_like(_norm(b))
        state = (x, r, tf.zeros_like(b), tf.zeros_like(b), one, one, one, tf.constant(0, tf.int32))

        def body(x, r, p, v, rho, alpha, omega, it):
            active = _norm(r) > tol
            rho_new = _dot(rhat, r)
            beta = _safe_div(rho_new, rho) * _safe_div(alpha, omega)
            p = r + beta[:, None] * (p - omega[:, None] * v)
            v = apply(p)
            alpha = _safe_div(rho_new, _dot(rhat, v))
            s = r - alpha[:, None] * v
            t = apply(s)
            omega = _safe_div(_dot(t, s), _dot(t, t))
            x_new = x + alpha[:, None] * p + omega[:, None] * s
            r_new = s - omega[:, None] * t
            keep = active[:, None]
            return (
                tf.where(keep, x_new, x),
                tf.where(keep, r_new, r),
                p,
                v,
                rho_new,
                alpha,
                omega,
                it + 1,
            )

        def cond(x, r, p, v, rho, alpha, omega, it):
            # Stop on convergence, or on breakdown (rho or omega exactly zero).
            alive = (_norm(r) > tol) & tf.not_equal(rho, 0) & tf.not_equal(omega, 0)
            return tf.reduce_any(alive)

        x, r, *_, it = tf.while_loop(cond, body, state, maximum_iterations=self.max_iters)
        res = _norm(b - apply(x))
        return LinearSolveResult(x=x, converged=res <= tol, iterations=it, residual_norm=res)
