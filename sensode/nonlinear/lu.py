"""Dense LU: one factorisation serving ``A x = b`` and ``A^T x = b``, with a condition estimate.

See `sensode.nonlinear.linsolve` (the public module) for the design.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from .. import tfcompat
from .operators import LinearSolver, LinearSolveResult, _eps

__all__ = ["LU", "LUFactors", "BlockDiagonalLU"]

def _lu_xla(a):
    """Partial-pivoting LU of a ``[B, m, w]`` panel (``m >= w``; square for a whole matrix) in a `tf.while_loop`.

    TF has no XLA kernel for ``Lu`` on CPU. Returns ``(lu, perm)`` with the
    convention of `tf.linalg.lu`: ``a[..., perm, :] = L U`` (``L`` ``m x w``
    unit lower, packed below the diagonal). Zero pivots are replaced by 1 for
    the elimination; the caller detects them from the diagonal of ``U``.
    """
    m, w = a.shape[-2], a.shape[-1]
    rows, cols = tf.range(m), tf.range(w)
    perm0 = tf.broadcast_to(rows, tf.shape(a)[:-1])

    def body(k, a, perm):
        col = tf.gather(a, k, axis=-1)  # [B, m]
        p = tf.argmax(tf.where(rows >= k, tf.abs(col), -tf.ones_like(col)), axis=-1, output_type=tf.int32)
        idx = tf.where(rows == k, p[:, None], tf.where(rows == p[:, None], k, rows))
        a = tf.gather(a, idx, batch_dims=1)
        perm = tf.gather(perm, idx, batch_dims=1)
        col = tf.gather(a, k, axis=-1)
        pivot = tf.gather(col, k, axis=-1)  # [B]
        pivot = tf.where(tf.equal(pivot, 0), tf.ones_like(pivot), pivot)
        below = rows > k
        l = tf.where(below, col / pivot[:, None], tf.zeros_like(col))  # [B, m]
        urow = tf.where(cols > k, tf.gather(a, k, axis=-2), tf.zeros_like(a[:, 0]))  # [B, w]: row k right of k
        a = a - l[:, :, None] * urow[:, None, :]
        a = tf.where(below[:, None] & tf.equal(cols, k)[None, :], l[:, :, None], a)
        return k + 1, a, perm

    _, lu, perm = tf.while_loop(lambda k, a, p: k < w, body, (0, a, perm0), maximum_iterations=w)
    return lu, perm


# Above this many rows, `_lu_xla_blocked` (panels of `_LU_BLOCK` columns, trailing updates as products). Measured
# on Robertson duplicated (Rodas5 under XLA, 111 steps, 2 December 2026): 300 states, a solve 2.2-3.4 -> 0.93-1.04 s,
# first call +3 to +13 s (each panel is compiled); 90 states 121 -> 96 ms for +4 s of compilation, so not there.
_LU_BLOCKED_ABOVE = 128
_LU_BLOCK = 32


def _lu_xla_blocked(a, block: int = _LU_BLOCK):
    """`_lu_xla` by panels of ``block`` columns: right-looking blocked LU with partial pivoting (Golub & Van Loan, Alg. 3.4.2).

    Each panel of ``block`` columns is factorised by `_lu_xla` (rows from
    the panel's first down); its row swaps are applied to the columns left
    and right of it; the block row of ``U`` right of the panel is one
    triangular solve and the trailing matrix one matrix product. The panels
    are unrolled (``n`` is static). Under XLA the rank-1 loop of `_lu_xla`
    touches the whole matrix ``n`` times; here most of the work is products.
    """
    n = a.shape[-1]
    perm = tf.broadcast_to(tf.range(n), tf.shape(a)[:-1])
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        w = k1 - k0
        panel, p = _lu_xla(a[:, k0:, k0:k1])  # p permutes rows k0..n-1
        left = tf.gather(a[:, k0:, :k0], p, batch_dims=1)
        right = tf.gather(a[:, k0:, k1:], p, batch_dims=1)
        perm = tf.concat([perm[:, :k0], tf.gather(perm[:, k0:], p, batch_dims=1)], axis=1)
        if k1 < n:
            l11 = tf.linalg.band_part(panel[:, :w], -1, 0) - tf.linalg.diag(tf.linalg.diag_part(panel[:, :w])) + tf.eye(w, dtype=a.dtype)
            u12 = tf.linalg.triangular_solve(l11, right[:, :w], lower=True)
            a22 = right[:, w:] - tf.matmul(panel[:, w:], u12)
            right = tf.concat([u12, a22], axis=1)
        a = tf.concat([a[:, :k0], tf.concat([left, panel, right], axis=2)], axis=1)
    return a, perm


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

    def factor(self, a, *, estimate_condition: bool = True) -> LUFactors:
        """Factor a ``[B, n, n]`` matrix; see `LUFactors`.

        ``estimate_condition=False`` skips the condition estimate (a few
        solves, which under XLA cost several times the factorisation of a
        small matrix) for callers that catch bad solves themselves, such as
        the stiff ODE methods, whose error control rejects a step with a
        wild stage: a system is then singular only when a pivot of the
        shifted matrix is at most `rcond_threshold` times ``max |A|`` (an
        exactly singular ``A``, whose pivot is the shift), ``A`` is zero or
        not finite, and ``rcond`` is NaN (not estimated).
        """
        n = a.shape[-1]
        a_shifted, finite, scale = self._shifted(a)
        if tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
            lu, perm = _lu_xla_blocked(a_shifted) if n > _LU_BLOCKED_ABOVE else _lu_xla(a_shifted)
        else:
            lu, perm = tf.linalg.lu(a_shifted)
        no = tf.zeros_like(finite)
        if not estimate_condition:
            pivot = tf.reduce_min(tf.abs(tf.linalg.diag_part(lu)), axis=-1)
            singular = self._pivot_singular(pivot, scale, finite, n)
            return LUFactors(lu, perm, singular, tf.fill(tf.shape(scale), tf.constant(np.nan, a.dtype)))
        raw = LUFactors(lu, perm, no, tf.ones_like(scale))

        def solve(x, transpose):
            return self._substitute(raw, x[..., None], transpose)[..., 0]

        inv_norm = _inv_norm1_estimate(solve, tf.zeros_like(a[..., 0]))
        a_norm = tf.reduce_max(tf.reduce_sum(tf.abs(a_shifted), axis=-2), axis=-1)
        rcond = 1.0 / (a_norm * inv_norm)  # 0 when a solve overflowed; NaN fails the test below
        singular = ~(rcond > self.rcond_threshold(n, a.dtype)) | ~finite | tf.equal(scale, 0)
        rcond = tf.where(singular, tf.zeros_like(rcond), rcond)
        return LUFactors(lu, perm, singular, rcond)

    def inverse(self, a):
        """``(A^{-1}, singular)`` of one ``[n, n]`` matrix by Gauss--Jordan elimination, partial pivoting.

        One `tf.while_loop` of ``n`` eliminations on ``[A | I]``. Under XLA
        this is much cheaper than `factor` followed by solves for small
        systems: XLA expands every triangular solve into a loop that inverts
        the factor's diagonal blocks again, and a Rosenbrock step solves
        eight times with one matrix (`sensode.ode.linear.Factorised`).
        ``singular`` follows `factor` with ``estimate_condition=False`` (the
        pivots are those of the LU factorisation of the same shifted
        matrix); where it is True the inverse is NaN.
        """
        a = tf.convert_to_tensor(a)
        if a.shape.rank != 2 or a.shape[0] is None or a.shape[0] != a.shape[1]:
            raise ValueError(f"`a` must be one square [n, n] matrix with a static n, got shape {a.shape}")
        if not a.dtype.is_floating:
            raise TypeError(f"`a` must be a float tensor, got {a.dtype.name}")
        n = a.shape[-1]
        dtype = a.dtype
        a_shifted, finite, scale = (x[0] for x in self._shifted(a[None]))
        rows = tf.range(n)

        def body(k, w, min_pivot):
            col = w[:, k]
            p = tf.argmax(tf.where(rows >= k, tf.abs(col), -tf.ones_like(col)), output_type=tf.int32)
            row_p, row_k = w[p], w[k]
            pivot = row_p[k]
            min_pivot = tf.minimum(min_pivot, tf.abs(pivot))
            pivot_row = row_p / tf.where(tf.equal(pivot, 0), tf.ones_like(pivot), pivot)
            w = tf.where(tf.equal(rows, p)[:, None], row_k[None, :], w)  # swap rows k and p
            col = tf.where(tf.equal(rows, p), col[k], col)
            multipliers = tf.where(tf.equal(rows, k), tf.zeros_like(col), col)
            w = w - multipliers[:, None] * pivot_row[None, :]
            w = tf.where(tf.equal(rows, k)[:, None], pivot_row[None, :], w)
            return k + 1, w, min_pivot

        w0 = tf.concat([a_shifted, tf.eye(n, dtype=dtype)], axis=-1)  # [n, 2n]
        inf = tf.constant(np.inf, dtype)
        _, w, min_pivot = tf.while_loop(lambda k, w, m: k < n, body, (tf.constant(0), w0, inf),
                                        maximum_iterations=n)
        singular = self._pivot_singular(min_pivot, scale, finite, n)
        return tf.where(singular, tf.constant(np.nan, dtype), w[:, n:]), singular

    @staticmethod
    def _shifted(a):
        """``(A + shift I, finite, scale)`` for ``[B, n, n]``: non-finite systems replaced by ``I``.

        ``scale = max |A|`` and ``shift = eps scale``: a zero pivot of an exactly
        singular ``A`` becomes the shift, which the pivot test then catches.
        """
        n = a.shape[-1]
        finite = tf.reduce_all(tf.math.is_finite(a), axis=[-2, -1])
        a = tf.where(finite[:, None, None], a, tf.eye(n, batch_shape=[1], dtype=a.dtype))
        scale = tf.reduce_max(tf.abs(a), axis=[-2, -1])  # [B]
        shift = _eps(a.dtype) * scale + np.finfo(a.dtype.as_numpy_dtype).tiny
        return a + shift[:, None, None] * tf.eye(n, dtype=a.dtype), finite, scale

    def _pivot_singular(self, min_pivot, scale, finite, n: int):
        """The pivot test without a condition estimate (`factor` and `inverse` share it)."""
        return ~(min_pivot > self.rcond_threshold(n, scale.dtype) * scale) | ~finite | tf.equal(scale, 0)

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


@dataclasses.dataclass(frozen=True)
class BlockDiagonalLU(LinearSolver):
    """LU of the diagonal blocks of a block-diagonal matrix: ``n / block_size`` independent small systems.

    The matrix must be block diagonal with square blocks of ``block_size``
    consecutive rows and columns (``n`` a multiple of ``block_size``); entries
    outside those blocks are *ignored*, so on a matrix that is not block
    diagonal the result is the solve with its diagonal blocks, not with the
    matrix. Each block is factored by `LU` (partial pivoting, the same
    singularity test), all blocks at once as a batch: ``O(n b^2)`` time and
    ``O(n b)`` memory where a dense LU costs ``O(n^3)`` and ``O(n^2)``.

    When to use: systems made of weakly interacting groups whose Jacobian is
    block diagonal, such as a batch of independent copies of a model stacked
    into one state (``[B, n]`` flattened row by row: ``block_size = n``),
    or a network of compartments that share only parameters. With a stiff
    ODE method (``Rodas5(linsolve=BlockDiagonalLU(3))``) the Jacobian itself is formed
    from ``block_size`` forward-mode products (one per column of a block:
    column ``c`` of every block at once), not ``n``.

    Args:
      block_size: the side of each diagonal block (a positive int).

    A solve reports a system as not converged (``x`` NaN) when any of its
    blocks is singular.
    """

    block_size: int = 1

    direct = True

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, (int, np.integer)) or self.block_size < 1:
            raise ValueError(f"`block_size` must be a positive int, got {self.block_size!r}")
        object.__setattr__(self, "block_size", int(self.block_size))

    def check_size(self, n: int, who: str = "BlockDiagonalLU"):
        """Raise a clear error unless ``n`` (the number of unknowns) is a multiple of ``block_size``."""
        if n % self.block_size:
            raise ValueError(
                f"{who}: the system has {n} unknowns, which is not a multiple of `block_size` = {self.block_size}"
            )
        return n // self.block_size

    def blocks(self, a):
        """The diagonal blocks ``[..., n / b, b, b]`` of ``a`` ``[..., n, n]`` (``b = block_size``)."""
        n, b = a.shape[-1], self.block_size
        nb = self.check_size(n)
        lead = a.shape[:-2].as_list()
        a = tf.reshape(a, lead + [nb, b, nb, b])
        r = len(lead)
        perm = list(range(r)) + [r + 1, r + 3, r, r + 2]  # [..., b, b, nb, nb]
        diag = tf.linalg.diag_part(tf.transpose(a, perm))  # [..., b, b, nb]
        return tf.transpose(diag, list(range(r)) + [r + 2, r, r + 1])

    def solve(self, operator, b, *, transpose: bool = False) -> LinearSolveResult:
        a = operator.dense()  # [B, n, n]
        nb, bs = self.check_size(a.shape[-1]), self.block_size
        blocks = tf.reshape(self.blocks(a), [-1, bs, bs])
        vec = b.shape.rank == 2
        rhs = tf.reshape(b, [-1, bs] if vec else [-1, bs, b.shape[-1]])
        lu = LU()
        res = lu.solve_factored(lu.factor(blocks), rhs, transpose=transpose)
        x = tf.reshape(res.x, tf.shape(b))
        ok = tf.reduce_all(tf.reshape(res.converged, [-1, nb]), axis=-1)
        x = tf.where(tf.reshape(ok, [-1] + [1] * (x.shape.rank - 1)), x, tf.constant(np.nan, b.dtype))
        return LinearSolveResult(
            x=x,
            converged=ok,
            iterations=tf.constant(0, tf.int32),
            residual_norm=tf.where(ok, tf.zeros_like(ok, dtype=b.dtype), tf.constant(np.inf, b.dtype)),
        )
