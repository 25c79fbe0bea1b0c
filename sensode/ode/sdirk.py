"""ESDIRK methods with a simplified Newton iteration: `Kvaerno5`.

An ESDIRK (explicit first stage, singly diagonally implicit Runge--Kutta)
step solves, stage after stage, ``z_i = y + h sum_{j<i} a_ij k_j + h gamma
f(t + c_i h, z_i)``. Every stage has the same diagonal ``gamma``, so one
Jacobian and one factorisation of ``M = I / (gamma h) - J`` serve every
Newton iteration of every stage of a step (the simplified Newton method).
The iteration stops when the update, scaled by the solve's own tolerances,
is below ``NEWTON_KAPPA`` (Hairer's ``fnewt``, diffrax's ``kappa``: the
Newton error then stays well below the local error the controller accepts,
at loose and tight tolerances alike); a stage that has not converged within
``max_newton`` iterations gives the step an infinite error estimate, which the loop treats as a
rejected step and answers with a smaller ``h`` (the loop's ``factor_min``).

The stage derivative is recovered as ``k_i = (z_i - base_i) / (gamma h)``
rather than by evaluating ``f(z_i)``: the standard trick (Hairer & Wanner,
Sec. IV.8) that keeps the Newton residual out of the stiff components.

With a Krylov ``linsolve`` the Newton corrections are matrix-free
Newton--Krylov solves (`sensode.ode.matrixfree.MatrixFree`, products ``J v``
by forward-mode derivatives of ``f`` at the step's start); a Krylov solve
that does not converge fails its stage, which rejects the step as a
diverging Newton iteration does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from .linear import Layout
from .matrixfree import MatrixFree, check_linsolve
from .methods import MethodStep
from .rosenbrock import StiffCounters, _lincomb, _Stiff, interpolate_rows

__all__ = ["Kvaerno5", "NEWTON_KAPPA"]

# A stage has converged when its Newton update, in the error norm of the
# solve (scale ``atol + rtol |z|``), is at most this: the iteration error is
# then a hundredth of what the step-size controller accepts as local error
# (Hairer & Wanner, Sec. IV.8, take fnewt = 0.03 .. 0.01; diffrax 0.01).
NEWTON_KAPPA = 1e-2
# ... but never asked for less than rounding allows (a float32 solve at
# rtol 1e-7 would otherwise never converge): at least this many ulps.
_NEWTON_ULPS = 100.0


class _NewtonCarry(NamedTuple):
    """Kvaerno5's loop state: the counters and the Newton tolerances of this solve."""

    counters: StiffCounters
    rtol: tf.Tensor
    atol: tf.Tensor

# Kværnø (2004), the 5(4) ESDIRK "Kvaerno5" (7 stages, stiffly accurate:
# the solution is the last stage, the embedded 4th-order one the sixth).
# Coefficients and the stage predictors as tabulated by diffrax
# (diffrax/_solver/kvaerno5.py, itself from OrdinaryDiffEq.jl's
# sdirk_tableaus.jl).
_GAMMA = 0.26
_A = {
    2: [0.26],
    3: [0.13, 0.84033320996790809],
    4: [0.22371961478320505, 0.47675532319799699, -0.06470895363112615],
    5: [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998],
    6: [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676],
    7: [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
        0.06962479448202728],
}
_C = {2: 0.52, 3: 1.230333209967908, 4: 0.8957659843500759, 5: 0.43639360985864756, 6: 1.0, 7: 1.0}
# Predictors: the Newton start of stage i is y + h sum_j alpha_ij k_j.
_ALPHA = {
    2: [1.0],
    3: [-1.366025403784441, 2.3660254037844357],
    4: [-0.19650552613122207, 0.8113579546496623, 0.38514757148155954],
    5: [0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0],
    6: [-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0],
    7: _A[6] + [_GAMMA],
}
_B = _A[7] + [_GAMMA]
_B_ERR = [b - a for b, a in zip(_B, _A[6] + [_GAMMA, 0.0])]


@dataclasses.dataclass(frozen=True, eq=False)
class Kvaerno5(_Stiff):
    """Kværnø's 5(4) ESDIRK method with a simplified Newton iteration (the diffrax default).

    L-stable and stiffly accurate; 7 stages (6 implicit), one Jacobian and one
    LU per step shared by every stage, cubic Hermite dense output. Compared
    with `Rodas5` it needs the Jacobian only as a Newton matrix (an
    approximate one slows convergence, it does not spoil the order), at the
    price of Newton iterations.

    Args:
      newton_rtol, newton_atol: a stage has converged when the RMS of its
        Newton update scaled by ``newton_atol + newton_rtol |z|`` is at most
        1. Default (None): tied to the solve's tolerances,
        ``NEWTON_KAPPA * rtol`` (at least 100 ulps) and ``NEWTON_KAPPA *
        atol``, as Hairer's RADAU5 and diffrax do; a fixed number overrides.
      max_newton: static bound on Newton iterations per stage; a stage that
        has not converged rejects the step.
      linsolve: None or `sensode.linsolve.LU()` (default: ``J`` formed, one
        dense LU of ``M = I / (gamma h) - J`` per step, ``[N, N]`` with ``N``
        the number of state elements), or a Krylov solver
        (``sensode.linsolve.GMRES(...)``, ``BiCGStab(...)``; ``CG(...)`` only
        for symmetric ``J``) for matrix-free Newton--Krylov: each Newton
        correction is a Krylov solve whose products ``J v`` are forward-mode
        derivatives of ``f`` at the step's start; ``J`` is never formed and a
        problem's ``jac`` is not used. When to use: large systems (``N`` in
        the thousands) with cheap JVPs and a well-conditioned ``M``. Caution:
        no preconditioner yet; a Krylov solve that does not converge fails
        its stage and rejects the step (``h`` shrinks). Gradients (discrete
        adjoint): one transposed Krylov solve per solve, never
        backpropagation through the iterations. ``sol.stats`` then has
        ``njac = nlu = 0`` and ``nkrylov`` (Krylov iterations).

    References: A. Kværnø, "Singly diagonally implicit Runge--Kutta methods
    with an explicit first stage", BIT 44(3), 2004; Hairer & Wanner, Solving
    ODEs II, Sec. IV.8 (simplified Newton); Kidger, diffrax (``Kvaerno5``).
    """

    newton_rtol: float | None = None
    newton_atol: float | None = None
    max_newton: int = 10
    linsolve: Any = None

    name = "Kvaerno5"
    order = 5
    error_order = 4
    dense_rows = 3
    dense_nfe = 0

    def __post_init__(self):
        for k in ("newton_rtol", "newton_atol"):
            v = getattr(self, k)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"Kvaerno5: `{k}` must be a positive number or None, got {v!r}")
        if isinstance(self.max_newton, bool) or not isinstance(self.max_newton, int) or self.max_newton < 1:
            raise ValueError(f"Kvaerno5: `max_newton` must be a positive int, got {self.max_newton!r}")
        object.__setattr__(self, "linsolve", check_linsolve("Kvaerno5", self.linsolve))

    # Field by field, not `astuple`: that would flatten a linsolve dataclass
    # into its fields and equate GMRES(...) with BiCGStab(...).
    def _key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), self._key()))

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.name != "linsolve" or self.linsolve is not None]
        return f"Kvaerno5({', '.join(shown)})"

    def init(self, fn, t0, y0, f0):
        super().init(fn, t0, y0, f0)
        # Without the loop's tolerances (a bare step): those of rtol 1e-8 / atol 1e-10.
        return self.with_tolerances(StiffCounters.zeros(), tf.constant(1e-8, y0[0].dtype),
                                    tf.constant(1e-10, y0[0].dtype))

    def with_tolerances(self, carry, rtol, atol):
        counters = carry.counters if isinstance(carry, _NewtonCarry) else carry
        dtype = rtol.dtype
        floor = _NEWTON_ULPS * np.finfo(dtype.as_numpy_dtype).eps
        # A per-component atol enters by its smallest entry (the safe side).
        n_rtol = (tf.maximum(NEWTON_KAPPA * rtol, floor) if self.newton_rtol is None
                  else tf.constant(self.newton_rtol, dtype))
        n_atol = (NEWTON_KAPPA * tf.reduce_min(atol) if self.newton_atol is None
                  else tf.constant(self.newton_atol, dtype))
        n_atol = tf.maximum(n_atol, np.finfo(dtype.as_numpy_dtype).tiny)  # a zero component never divides 0 / 0
        return _NewtonCarry(counters, tf.cast(n_rtol, dtype), tf.cast(n_atol, dtype))

    def stats(self, carry) -> dict:
        return carry.counters.as_stats(krylov=self.krylov)

    def _newton(self, g, t_i, base, z0, w, gh, rtol, atol):
        """Solve ``z = base + gh g(t_i, z)`` from ``z0``: ``(z, converged, iterations, krylov iterations)``."""
        inv_gh = 1.0 / gh

        def body(it, z, done, broken, nk):
            resid = z - base - gh * g(t_i, z)
            # A failed solve (Krylov not converged, singular M) stops the stage
            # (not converged): its finite x keeps z finite for the discrete adjoint.
            x, solved, kit = w.solve_checked(resid)
            broken, nk = broken | ~solved, nk + kit
            dz = -inv_gh * x  # (I - gh J)^{-1} = M^{-1} / (gh)
            size = tf.sqrt(tf.reduce_mean(tf.square(dz / (atol + rtol * tf.abs(z)))))
            ok = (size <= 1.0) & ~broken  # NaN (singular M, overflow) never converges
            return it + 1, z + dz, ok, broken, nk

        zero = tf.constant(0, tf.int32)
        it, z, ok, _, nk = tf.while_loop(
            lambda it, z, done, broken, nk: ~done & ~broken, body,
            (zero, z0, tf.constant(False), tf.constant(False), zero),
            maximum_iterations=self.max_newton,
        )
        return z, ok, it, nk

    def _step(self, fn, t, y, f, h, carry) -> MethodStep:
        layout = Layout(y)
        g = self._vector_fn(fn, layout)
        yv, f0 = layout.vec(y), layout.vec(f)
        rtol, atol = carry.rtol, carry.atol
        gh = _GAMMA * h
        w, _ = self._factorise(fn, g, layout, t, yv, 1.0 / gh, with_t=False)
        ks = [f0]
        ok_all = tf.constant(True)
        iters = tf.constant(0, tf.int32)
        nkrylov = tf.constant(0, tf.int32)
        z = yv
        for i in range(2, 8):
            base = yv + h * _lincomb(_A[i], ks)
            z0 = yv + h * _lincomb(_ALPHA[i], ks)
            z, ok, it, nk = self._newton(g, t + _C[i] * h, base, z0, w, gh, rtol, atol)
            ks.append((z - base) / gh)
            ok_all = ok_all & ok
            iters += it
            nkrylov += nk
        # A failed Newton iteration rejects the step through an infinite
        # error (the loop then shrinks h by its factor_min). The proposal
        # falls back to the start state rather than NaN: a NaN here would
        # turn the zero cotangent of the rejected branch into NaN gradients
        # in the discrete adjoint (0 * NaN).
        y1 = tf.where(ok_all, z, yv)
        f1 = g(t + h, y1)
        err = tf.where(ok_all, h * _lincomb(_B_ERR, ks), tf.constant(np.inf, yv.dtype))
        rows = tf.stack([f0, f1, (y1 - yv) / h], axis=0)
        lu = 0 if isinstance(w, MatrixFree) else 1
        carry = carry._replace(counters=carry.counters.add(njac=lu, nlu=lu, nsolve=iters, nkrylov=nkrylov))
        return MethodStep(layout.unvec(y1), layout.unvec(f1), layout.unvec(err), layout.unvec_rows(rows),
                          iters + 1, carry)

    def dense(self, fn, t, y, h, step):
        return step.data, 0

    def interpolate(self, theta, y0, h, rows):
        """Cubic Hermite from the end points' values and derivatives."""
        th = theta[:, None]
        th2, th3 = th * th, th * th * th
        w = tf.concat([th - 2.0 * th2 + th3, th3 - th2, 3.0 * th2 - 2.0 * th3], axis=1)
        return interpolate_rows(w, y0, h, rows)
