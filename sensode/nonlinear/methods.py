"""Methods for ``f(u, p) = 0``: Newton--Raphson, Newton--Krylov, Anderson, DynamicSS.

Every method works on the *canonical* form the entry point
(`sensode.implicit.solve_nonlinear`) builds: a residual ``fn(u)`` mapping
``[B, n] -> [B, n]`` whose row ``b`` depends only on row ``b`` (``B``
independent systems of ``n`` unknowns). Norms, convergence and line searches
are per system; a system that has converged is frozen while the others go on.

Convergence, for every method, is judged on the residual: system ``b`` has
converged when

    max_i |f(u)_bi| <= abstol + reltol * min(max_i |u_bi|, s_b),
    s_b = max(max_i |u0_bi|, max_i |f(u0)_bi|)

(for `DynamicSS`, ``f`` is the right-hand side ``du/dt``; SciML's steady-state
test). The relative term lets the residual's rounding floor grow with the
size of the root, but never beyond the problem's initial scale ``s_b``: an
iterate that runs away (``|u| ~ 1e14`` on a singular, inconsistent system)
cannot make a large residual pass. A system that has not converged when a
loop stops has ``u`` NaN (its ``resid_norm`` stays the last residual). The loops are `tf.while_loop`s with a static ``max_iters`` and a typed
state; nothing branches in Python on a tensor value, so they run eagerly, in
`tf.function` and under XLA. Failures are reported in ``status``
(`sensode.Status`): ``MAX_ITERS``, ``SINGULAR``, ``NONFINITE`` (and, for
`DynamicSS`, the ODE loop's ``MAX_STEPS`` / ``DT_MIN``).

These loops produce values only; gradients never flow through them (the entry
point runs them with gradient recording stopped and attaches the implicit
adjoint instead).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from .linsolve import GMRES, LU, JacobianOperator, LinearSolver
from ..ode.loop import SolveOptions, integrate
from ..solution import Status
from ..ode.methods import ODEMethod, Tsit5

__all__ = [
    "NonlinearResult",
    "NonlinearAlgorithm",
    "NewtonRaphson",
    "NewtonKrylov",
    "AndersonAcceleration",
    "DynamicSS",
]


class NonlinearResult(NamedTuple):
    """What a method's `run` returns (canonical shapes)."""

    u: tf.Tensor  # [B, n]
    resid_norm: tf.Tensor  # [B] max |f(u)| per system
    iterations: tf.Tensor  # int32 scalar
    status: tf.Tensor  # int32 scalar


def _row_max(x):
    return tf.reduce_max(tf.abs(x), axis=-1)


def _row_finite(x):
    return tf.reduce_all(tf.math.is_finite(x), axis=-1)


def _scale0(u0, fu0):
    """``[B]`` initial scale of each system: ``max(max|u0|, max|f(u0)|)``."""
    return tf.maximum(_row_max(u0), _row_max(fu0))


def _converged(fu, u, abstol, reltol, scale0):
    # The reltol term follows |u| (rounding in f grows with the size of the
    # root) but only up to the problem's initial scale: an iterate that runs
    # away (singular or inconsistent systems, u ~ 1e14) must not loosen the
    # test until any residual passes.
    return _row_max(fu) <= abstol + reltol * tf.minimum(_row_max(u), scale0)


def _first_failure(status, failed, code):
    """Keep the first failure: set ``code`` only if still SUCCESS and ``failed``."""
    return tf.where(tf.equal(status, Status.SUCCESS) & failed, tf.constant(int(code), tf.int32), status)


def _finish(u, fu, done, iters, status) -> NonlinearResult:
    status = _first_failure(status, ~tf.reduce_all(done), Status.MAX_ITERS)
    # A system that did not converge has no root to report: NaN, never the
    # last iterate (which would look like an answer). resid_norm keeps the
    # last residual as the diagnostic.
    u = tf.where(done[:, None], u, tf.constant(np.nan, u.dtype))
    return NonlinearResult(u=u, resid_norm=_row_max(fu), iterations=iters, status=status)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be a Python int >= {minimum}, got {value!r}")


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and np.isfinite(value)):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")


class NonlinearAlgorithm:
    """Base class of the methods for ``f(u, p) = 0``."""

    #: True if the method needs the ODE right-hand side (`SteadyStateProblem`).
    needs_rhs: bool = False

    def run(self, fn, u0, *, abstol, reltol, max_iters: int, rhs=None) -> NonlinearResult:
        """Solve ``fn(u) = 0`` from ``u0`` (``[B, n]``); see the module docstring."""
        raise NotImplementedError


class _NewtonState(NamedTuple):
    u: tf.Tensor
    fu: tf.Tensor
    done: tf.Tensor  # [B]
    iters: tf.Tensor
    status: tf.Tensor


@dataclasses.dataclass(frozen=True)
class NewtonRaphson(NonlinearAlgorithm):
    """Newton--Raphson with a backtracking (Armijo) line search.

    Each iteration solves ``J du = -f(u)`` with ``linsolve`` and then tries
    ``u + a du`` for ``a = 1, 1/2, 1/4, ...`` until the merit
    ``phi = |f|^2 / 2`` decreases enough: ``phi(u + a du) <= (1 - 2 c a) phi(u)``
    (``c = armijo``). If no trial passes within ``max_backtracks`` halvings the
    smallest step is taken. Quadratic convergence near a regular root; the line
    search makes it converge from reasonable starting points.

    When to use: small to medium systems (``n`` up to a few thousand) with the
    default dense `LU`; with a matrix-free ``linsolve`` it is Newton--Krylov.
    Caution: the line search only guarantees descent of ``|f|``; it can stall
    at a local minimum of ``|f|`` that is not a root (status ``MAX_ITERS``).

    Args:
      linsolve: a `sensode.linsolve` solver for ``J du = -f``; default `LU()`.
        A singular or numerically singular ``J`` with `LU` (estimated
        ``rcond_1 <= LU.rcond_threshold``) gives status ``SINGULAR``.
      line_search: backtrack as above; ``False`` takes full Newton steps.
      max_backtracks: static bound on the halvings per iteration.
      armijo: sufficient-decrease constant ``c``.

    References: Dennis & Schnabel, Numerical Methods for Unconstrained
    Optimization and Nonlinear Equations, SIAM 1996, Sec. 6.3.
    """

    linsolve: LinearSolver | None = None
    line_search: bool = True
    max_backtracks: int = 10
    armijo: float = 1e-4

    def __post_init__(self):
        if self.linsolve is not None and not isinstance(self.linsolve, LinearSolver):
            raise TypeError(f"`linsolve` must be a sensode.linsolve solver such as LU(), got {self.linsolve!r}")
        _check_int(self.max_backtracks, "max_backtracks", 0)
        _check_positive(self.armijo, "armijo")

    def _linsolve(self) -> LinearSolver:
        return LU() if self.linsolve is None else self.linsolve

    def run(self, fn, u0, *, abstol, reltol, max_iters: int, rhs=None) -> NonlinearResult:
        linsolve = self._linsolve()
        fu0 = fn(u0)
        scale0 = _scale0(u0, fu0)
        status0 = tf.where(tf.reduce_all(_row_finite(fu0)), Status.SUCCESS, Status.NONFINITE)
        state = _NewtonState(
            u=u0,
            fu=fu0,
            done=_converged(fu0, u0, abstol, reltol, scale0),
            iters=tf.constant(0, tf.int32),
            status=tf.cast(status0, tf.int32),
        )

        def merit(f):
            return 0.5 * tf.reduce_sum(tf.square(f), axis=-1)

        def cond(s: _NewtonState):
            return tf.equal(s.status, Status.SUCCESS) & ~tf.reduce_all(s.done)

        def body(s: _NewtonState):
            active = ~s.done
            lin = linsolve.solve(JacobianOperator(fn, s.u), -s.fu)
            du = lin.x
            lin_ok = _row_finite(du)
            if linsolve.direct:
                lin_ok = lin_ok & lin.converged
            # A failed row does not move; a converged row is frozen.
            du = tf.where((active & lin_ok)[:, None], du, tf.zeros_like(du))
            phi0 = merit(s.fu)
            one = tf.ones_like(phi0)

            def trial(alpha):
                ut = s.u + alpha[:, None] * du
                ft = fn(ut)
                phit = merit(ft)
                ok = tf.math.is_finite(phit) & (phit <= (1.0 - 2.0 * self.armijo * alpha) * phi0)
                return ut, ft, ok

            ut, ft, ok = trial(one)
            if self.line_search and self.max_backtracks > 0:

                def ls_cond(alpha, ut, ft, ok):
                    return tf.reduce_any(active & lin_ok & ~ok)

                def ls_body(alpha, ut, ft, ok):
                    alpha = tf.where(ok, alpha, 0.5 * alpha)
                    ut, ft, ok2 = trial(alpha)
                    return alpha, ut, ft, ok | ok2

                _, ut, ft, ok = tf.while_loop(
                    ls_cond, ls_body, (one, ut, ft, ok), maximum_iterations=self.max_backtracks
                )
            move = (active & lin_ok)[:, None]
            u = tf.where(move, ut, s.u)
            fu = tf.where(move, ft, s.fu)
            # An iterative linsolve that failed and whose step does not even
            # decrease |f| leaves Newton where it is (J v = 0 at u: J singular):
            # every further iteration would repeat it, so stop now.
            stuck = active & lin_ok & ~lin.converged & ~ok
            status = _first_failure(s.status, tf.reduce_any(active & ~lin_ok | stuck), Status.SINGULAR)
            status = _first_failure(status, ~tf.reduce_all(_row_finite(fu)), Status.NONFINITE)
            done = s.done | _converged(fu, u, abstol, reltol, scale0)
            return (_NewtonState(u=u, fu=fu, done=done, iters=s.iters + 1, status=status),)

        s = tf.while_loop(cond, body, (state,), maximum_iterations=max_iters)[0]
        return _finish(s.u, s.fu, s.done, s.iters, s.status)


@dataclasses.dataclass(frozen=True)
class NewtonKrylov(NewtonRaphson):
    """Matrix-free Newton--Krylov: `NewtonRaphson` whose steps come from a Krylov solver.

    The Jacobian is never formed: each Krylov iteration costs one JVP of the
    residual. Inexact steps are fine for Newton (Dembo, Eisenstat & Steihaug):
    a loose ``GMRES(rtol=1e-4)`` often needs fewer products in total, at the
    price of linear instead of quadratic convergence near the root.

    When to use: large systems with sparse or structured Jacobians (``n`` in
    the thousands and up). Caution: a Krylov solver cannot tell a singular
    Jacobian from a hard one. When it fails and its step does not decrease
    ``|f|`` either, Newton stops with status ``SINGULAR`` (it would repeat
    the same step); a badly conditioned Jacobian on which the Krylov solver
    makes some progress just converges slowly (``MAX_ITERS``). No
    preconditioning yet.

    Args:
      linsolve: a matrix-free solver (`GMRES`, `BiCGStab`, `CG` for symmetric
        positive definite Jacobians); default `GMRES()`.
      line_search, max_backtracks, armijo: as in `NewtonRaphson`.

    References: Knoll & Keyes, J. Comput. Phys. 193(2), 2004; Dembo,
    Eisenstat & Steihaug, SIAM J. Numer. Anal. 19(2), 1982.
    """

    def __post_init__(self):
        super().__post_init__()
        if self.linsolve is not None and self.linsolve.direct:
            raise TypeError(f"NewtonKrylov needs a matrix-free linsolve (GMRES, BiCGStab, CG), got {self.linsolve!r}")

    def _linsolve(self) -> LinearSolver:
        return GMRES() if self.linsolve is None else self.linsolve


class _AndersonState(NamedTuple):
    u: tf.Tensor
    fu: tf.Tensor
    d_f: tf.Tensor  # [B, m, n] differences of beta * f
    d_g: tf.Tensor  # [B, m, n] differences of g
    f_prev: tf.Tensor
    g_prev: tf.Tensor
    done: tf.Tensor
    iters: tf.Tensor
    status: tf.Tensor


@dataclasses.dataclass(frozen=True)
class AndersonAcceleration(NonlinearAlgorithm):
    """Fixed-point iteration ``u <- g(u)`` with Anderson acceleration.

    How to state a fixed-point problem ``u = g(u, p)``: write its residual,
    ``NonlinearProblem(lambda u, p: g(u, p) - u, u0, p)``. The method iterates
    the map ``u + beta * f(u, p)`` (``= g(u, p)`` for ``beta = 1``), so the
    same problem can be handed to Newton and differentiated by the same
    implicit adjoint. (This is SciML's convention: a `NonlinearProblem` is
    turned into the fixed point of ``u + f(u)``.)

    Type-II Anderson: with the last ``memory`` differences ``dF`` of
    ``F = beta f`` and ``dG`` of ``G = u + F``, take
    ``gamma = argmin |F - dF gamma|`` (Tikhonov-regularised normal equations,
    ``[B, m, m]`` per iteration) and ``u <- G - dG gamma``. ``memory=0`` is the
    plain (Picard) iteration.

    When to use: contractive or nearly contractive maps (equilibrium layers,
    self-consistent field iterations) where the Jacobian is expensive: no
    derivatives are needed. Caution: if ``g`` is not close to a contraction,
    the iteration can diverge (status ``NONFINITE`` or ``MAX_ITERS``); a
    smaller ``beta`` (damping) helps. Needs more iterations than Newton.

    Args:
      memory: number of stored differences ``m`` (static).
      beta: damping / mixing parameter (positive).
      regularization: relative Tikhonov weight for the small least squares.

    References: D. G. Anderson, J. ACM 12(4), 1965; Walker & Ni, SIAM J.
    Numer. Anal. 49(4), 2011.
    """

    memory: int = 5
    beta: float = 1.0
    regularization: float = 1e-10

    def __post_init__(self):
        _check_int(self.memory, "memory", 0)
        _check_positive(self.beta, "beta")
        _check_positive(self.regularization, "regularization")

    def run(self, fn, u0, *, abstol, reltol, max_iters: int, rhs=None) -> NonlinearResult:
        m = self.memory
        dtype = u0.dtype
        fu0 = fn(u0)
        scale0 = _scale0(u0, fu0)
        nb = u0.shape[0] if u0.shape[0] is not None else tf.shape(u0)[0]
        n = u0.shape[-1]
        status0 = tf.where(tf.reduce_all(_row_finite(fu0)), Status.SUCCESS, Status.NONFINITE)
        state = _AndersonState(
            u=u0,
            fu=fu0,
            d_f=tf.zeros([nb, m, n], dtype),
            d_g=tf.zeros([nb, m, n], dtype),
            f_prev=tf.zeros_like(u0),
            g_prev=tf.zeros_like(u0),
            done=_converged(fu0, u0, abstol, reltol, scale0),
            iters=tf.constant(0, tf.int32),
            status=tf.cast(status0, tf.int32),
        )
        tiny = float(np.finfo(dtype.as_numpy_dtype).tiny)

        def cond(s):
            return tf.equal(s.status, Status.SUCCESS) & ~tf.reduce_all(s.done)

        def body(s: _AndersonState):
            big_f = self.beta * s.fu
            big_g = s.u + big_f
            d_f, d_g = s.d_f, s.d_g
            u_next = big_g
            if m > 0:
                slot = tf.one_hot(tf.math.floormod(s.iters - 1, m), m, on_value=True, off_value=False)
                store = slot[None, :, None] & (s.iters > 0)
                d_f = tf.where(store, (big_f - s.f_prev)[:, None, :], d_f)
                d_g = tf.where(store, (big_g - s.g_prev)[:, None, :], d_g)
                gram = tf.einsum("bin,bjn->bij", d_f, d_f)
                scale = tf.reduce_max(tf.linalg.diag_part(gram), axis=-1)  # [B]
                lam = self.regularization * scale + tiny
                gram = gram + lam[:, None, None] * tf.eye(m, dtype=dtype)
                gamma = tf.linalg.solve(gram, tf.einsum("bin,bn->bi", d_f, big_f)[..., None])[..., 0]
                u_next = big_g - tf.einsum("bi,bin->bn", gamma, d_g)
            active = ~s.done[:, None]
            u = tf.where(active, u_next, s.u)
            fu = tf.where(active, fn(u), s.fu)
            status = _first_failure(s.status, ~tf.reduce_all(_row_finite(fu)), Status.NONFINITE)
            done = s.done | _converged(fu, u, abstol, reltol, scale0)
            return (
                _AndersonState(
                    u=u, fu=fu, d_f=d_f, d_g=d_g, f_prev=big_f, g_prev=big_g, done=done, iters=s.iters + 1, status=status
                ),
            )

        s = tf.while_loop(cond, body, (state,), maximum_iterations=max_iters)[0]
        return _finish(s.u, s.fu, s.done, s.iters, s.status)


@dataclasses.dataclass(frozen=True)
class DynamicSS(NonlinearAlgorithm):
    """Steady state by time integration: solve ``du/dt = f(t, u, p)`` until ``du/dt ~ 0``.

    Integrates with ``alg`` (the shared stepping loop) over windows of length
    ``t_first, 2 t_first, 4 t_first, ...`` and stops after the first window
    whose end state passes the convergence test on ``f``. ``max_iters``
    bounds the number of windows, so the horizon is
    ``t_first * (2^max_iters - 1)``. Only for a `SteadyStateProblem`, whose
    right-hand side should be autonomous: the residual is ``f(0, u, p)``.

    When to use: when Newton has no good starting point but the dynamics are
    known to be attracted to the steady state (stable chemical networks,
    dissipative systems); it finds the steady state that the ODE actually
    reaches from ``u0``. Caution: slow for stiff systems (explicit methods
    only, for now) and wrong for unstable steady states, which time
    integration never reaches.

    Args:
      alg: explicit ODE method, default `Tsit5()`.
      rtol, atol: tolerances of the time integration. Default (None): a
        tenth of the solve's ``reltol`` / ``abstol``. An explicit method
        settles near a steady state at a residual of about
        ``0.1 (atol + rtol |u|)`` (its steps grow to the stability limit,
        where the error no longer decays), so integration tolerances looser
        than the steady-state test can never pass it (status ``MAX_STEPS``
        or ``MAX_ITERS``); set both together.
      t_first: length of the first window.
      max_steps: static bound on the steps of each window.

    References: SciML SteadyStateDiffEq.jl (``DynamicSS``).
    """

    alg: ODEMethod = dataclasses.field(default_factory=Tsit5)
    rtol: float | None = None
    atol: float | None = None
    t_first: float = 1.0
    max_steps: int = 10000

    needs_rhs = True

    def __post_init__(self):
        if not isinstance(self.alg, ODEMethod) or not self.alg.adaptive:
            raise TypeError(f"`alg` must be an adaptive ODE method such as sensode.Tsit5(), got {self.alg!r}")
        for name in ("rtol", "atol"):
            if getattr(self, name) is not None:
                _check_positive(getattr(self, name), name)
        _check_positive(self.t_first, "t_first")
        _check_int(self.max_steps, "max_steps", 1)

    def run(self, fn, u0, *, abstol, reltol, max_iters: int, rhs=None) -> NonlinearResult:
        if rhs is None:
            raise TypeError("DynamicSS needs an ODE right-hand side: use it with a SteadyStateProblem")
        dtype = u0.dtype
        fu0 = fn(u0)
        scale0 = _scale0(u0, fu0)
        status0 = tf.where(tf.reduce_all(_row_finite(fu0)), Status.SUCCESS, Status.NONFINITE)
        state = _NewtonState(
            u=u0, fu=fu0, done=_converged(fu0, u0, abstol, reltol, scale0), iters=tf.constant(0, tf.int32),
            status=tf.cast(status0, tf.int32),
        )
        t_first = tf.constant(self.t_first, dtype)
        options = SolveOptions(
            rtol=0.1 * reltol if self.rtol is None else tf.constant(self.rtol, dtype),
            atol=0.1 * abstol if self.atol is None else tf.constant(self.atol, dtype),
            max_steps=self.max_steps,
        )

        def cond(s):
            return tf.equal(s.status, Status.SUCCESS) & ~tf.reduce_all(s.done)

        def body(s: _NewtonState):
            # Window k covers [t_first (2^k - 1), t_first (2^(k+1) - 1)].
            start = t_first * (tf.pow(tf.constant(2.0, dtype), tf.cast(s.iters, dtype)) - 1.0)
            end = 2.0 * start + t_first
            res = integrate(
                rhs, s.u, start, end, self.alg, options,
            )
            u = res.y1
            fu = fn(u)
            status = tf.cast(res.status, tf.int32)  # the loop runs only while SUCCESS
            status = _first_failure(status, ~tf.reduce_all(_row_finite(fu)), Status.NONFINITE)
            done = _converged(fu, u, abstol, reltol, scale0)
            return (_NewtonState(u=u, fu=fu, done=done, iters=s.iters + 1, status=status),)

        s = tf.while_loop(cond, body, (state,), maximum_iterations=max_iters)[0]
        return _finish(s.u, s.fu, s.done, s.iters, s.status)
