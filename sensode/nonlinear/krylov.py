"""Matrix-free Krylov solvers: GMRES, CG and BiCGStab, per-row convergence on ``[B, n]`` batches.

See `sensode.nonlinear.linsolve` (the public module) for the design.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from .operators import LinearSolver, LinearSolveResult, _default_rtol, _dot, _norm, _safe_div

__all__ = ["GMRES", "CG", "BiCGStab"]


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
