"""Rosenbrock (linearly implicit) methods for stiff problems: `Rosenbrock23`, `Rodas5`.

A Rosenbrock step solves linear systems with ``M = I / (gamma h) - J``
(``J = df/du`` at the start of the step) instead of a nonlinear system: no
Newton iteration, no convergence test, one LU per step. Both methods form
``J`` (and ``df/dt`` for non-autonomous problems, as the last column of the
same vectorised Jacobian) by automatic differentiation of the flat
right-hand side at every step, or take ``J`` from the problem's ``jac``
(`sensode.ode.linear.WithJacobian`; ``df/dt`` is then one forward-mode
tangent), factorise ``M`` once and reuse it for all stages
(`sensode.ode.linear.Factorised`, whose solves are differentiated by one
transposed solve each).

The method's carry holds only counters (``njac``, ``nlu``, ``nsolve``): the
Jacobian is re-evaluated every attempt, which `Rodas5` needs for its order
(it is not a W-method) and which keeps gradients of the discrete adjoint
exact.

Matrix-free (``linsolve=GMRES(...)`` or ``BiCGStab(...)``): every solve with
``M`` is a Krylov solve whose products ``J v`` are forward-mode derivatives
of ``f`` at the step's start (`sensode.ode.matrixfree.MatrixFree`): no Jacobian,
no LU (``njac = nlu = 0``; ``nkrylov`` counts the Krylov iterations). A
solve that does not converge makes the step's proposal NaN, so the loop
rejects the step and shrinks ``h``.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from ..nonlinear.linsolve import BlockDiagonalLU
from .linear import Layout, SensitivityFactorised, SensitivitySystem, WithJacobian, factorise, time_derivative
from .matrixfree import KRYLOV_SOLVERS, MatrixFree, check_linsolve
from .methods import MethodStep, ODEMethod

__all__ = ["Rosenbrock23", "Rodas5", "StiffCounters"]


class StiffCounters(NamedTuple):
    """Loop state of a stiff method: Jacobians, LU factorisations, linear solves and Krylov iterations so far."""

    njac: tf.Tensor
    nlu: tf.Tensor
    nsolve: tf.Tensor
    nkrylov: tf.Tensor

    @staticmethod
    def zeros():
        z = tf.constant(0, tf.int32)
        return StiffCounters(z, z, z, z)

    def add(self, njac=0, nlu=0, nsolve=0, nkrylov=0):
        return StiffCounters(self.njac + njac, self.nlu + nlu, self.nsolve + nsolve, self.nkrylov + nkrylov)

    def as_stats(self, krylov: bool = False) -> dict:
        """``njac``, ``nlu``, ``nsolve``, and ``nkrylov`` for a matrix-free method only."""
        out = {"njac": self.njac, "nlu": self.nlu, "nsolve": self.nsolve}
        if krylov:
            out["nkrylov"] = self.nkrylov
        return out


def interpolate_rows(w, y0: list, h, rows: list) -> list:
    """``y0 + h sum_r w_r rows_r``: one step (``h`` scalar, rows ``[R, *leaf]``) or
    one step per point (``y0`` ``[M, *leaf]``, ``h`` ``[M]``, rows ``[M, R, *leaf]``).

    ``w`` is ``[M, R]``. Returns ``[M, *leaf]`` leaves.
    """
    per_point = h.shape.rank == 1
    out = []
    for y, k in zip(y0, rows):
        leaf_rank = y.shape.rank - (1 if per_point else 0)
        wk = tf.reshape(w, tf.concat([tf.shape(w), tf.ones([leaf_rank], tf.int32)], 0))
        if per_point:
            interp = tf.reduce_sum(wk * k, axis=1)
            out.append(y + tf.reshape(h, [-1] + [1] * leaf_rank) * interp)
        else:
            interp = tf.reduce_sum(wk * k[None], axis=1)
            out.append(y[None] + h * interp)
    return out


# Eager steps run as graph functions, one per (right-hand side, method): an
# eager step re-derives its Jacobian machinery op by op (~0.2 s per Rodas5
# step on a 3-species model); traced once per solve it costs milliseconds.
# Keyed weakly by the right-hand side, and the graph function holds it only
# weakly: an entry (and the right-hand side's closure over the user's f and
# p) lives exactly as long as the caller keeps the right-hand side (the
# loop's, one solve).
_EAGER_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Stiff(ODEMethod):
    """Shared plumbing: the flat-vector view of ``fn``, eager graphs, the counters, the linear solver."""

    stiff = True
    linsolve = None  # None: dense LU; else a Krylov solver (subclasses validate with `check_linsolve`)

    def step(self, fn, t, y, f, h, carry) -> MethodStep:
        if not tf.executing_eagerly():
            return self._step(fn, t, y, f, h, carry)
        try:
            per_fn = _EAGER_STEPS.setdefault(fn, {})
        except TypeError:  # not weakly referenceable: a fresh graph function, uncached
            return tf.function(self._step, autograph=False)(fn, t, y, f, h, carry)
        key = self  # methods hash by type and options
        if key not in per_fn:
            ref = weakref.ref(fn)
            per_fn[key] = tf.function(lambda *a: self._step(ref(), *a), reduce_retracing=True, autograph=False)
        return per_fn[key](t, y, f, h, carry)

    def _step(self, fn, t, y, f, h, carry) -> MethodStep:
        raise NotImplementedError

    def init(self, fn, t0, y0, f0):
        Layout(y0, repr(self))  # fail early, with the method's name, on dynamic shapes
        return StiffCounters.zeros()

    def stats(self, carry) -> dict:
        return carry.as_stats(krylov=self.krylov)

    @staticmethod
    def _vector_fn(fn, layout: Layout):
        return lambda t, v: layout.vec(fn(t, layout.unvec(v)))

    def _factorise(self, fn, g, layout: Layout, t, yv, inv_gh, with_t: bool = True):
        """``(w, df/dt)`` at ``(t, yv)``: ``w.solve`` applies ``(I / (gamma h) - J)^{-1}``.

        Matrix-free with a Krylov ``linsolve`` (`MatrixFree`: products with
        ``g``, the whole flat system; a user ``jac`` is not used). Else ``J``
        from ``fn.jac`` when ``fn`` supplies it, or by AD; for a
        forward-sensitivity system (`SensitivitySystem`) the solves go through
        the state's own ``n x n`` factorisation (`SensitivityFactorised`).
        """
        block = self.block_size
        if self.krylov:
            w = MatrixFree(self.linsolve, g, t, yv, inv_gh)
        elif isinstance(fn, SensitivitySystem):
            w = SensitivityFactorised(fn, layout, t, yv, inv_gh, block_size=block)
        else:  # df/dt comes with an AD Jacobian, one more tangent of the same products
            jac = fn.jac(t, layout.unvec(yv)) if isinstance(fn, WithJacobian) else None
            return factorise(g, t, yv, inv_gh, block_size=block, jac=jac, with_t=with_t)
        return w, (self._time_derivative(fn, layout, g, t, yv) if with_t else None)

    @staticmethod
    def _time_derivative(fn, layout: Layout, g, t, yv):
        """``df/dt`` of the flat system ``g`` at ``(t, yv)``; a forward-sensitivity system supplies its own."""
        if isinstance(fn, SensitivitySystem) and fn.time_derivative is not None:
            u, s = layout.unvec(yv)
            return layout.vec(list(fn.time_derivative(t, u, s)))
        return time_derivative(g, t, yv)

    @property
    def krylov(self) -> bool:
        """True with a matrix-free (Krylov) ``linsolve``."""
        return isinstance(self.linsolve, KRYLOV_SOLVERS)

    @property
    def block_size(self) -> int | None:
        """``linsolve.block_size`` with `BlockDiagonalLU`, else None."""
        return self.linsolve.block_size if isinstance(self.linsolve, BlockDiagonalLU) else None

    # Methods are static keys (compiled-function caches, Keras configs): equal
    # when of one type with the same options.
    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}()" if self.linsolve is None else f"{name}(linsolve={self.linsolve!r})"

    @staticmethod
    def _finish(w, counters: StiffCounters, nsolve: int, values: list):
        """Count a Rosenbrock step's solves; NaN ``values`` if a solve failed (singular ``M``, Krylov)."""
        if isinstance(w, MatrixFree):
            counters = counters.add(nsolve=nsolve, nkrylov=w.total_iterations())
        else:
            counters = counters.add(njac=1, nlu=1, nsolve=nsolve)
        return counters, w.mark_failed(values)


_LINSOLVE_DOC = """
    Args:
      linsolve: how to solve with ``M = I / (gamma h) - J`` (``[N, N]``, ``N``
        the number of state elements, batch included). None or
        `sensode.linsolve.LU()` (default): form ``J`` (AD or the problem's
        ``jac``) and factorise ``M`` once per step. A Krylov solver
        (``sensode.linsolve.GMRES(...)``, ``BiCGStab(...)``; ``CG(...)`` only
        for symmetric ``J``): matrix-free Newton--Krylov, every solve iterates
        with ``M v = v / (gamma h) - J v``, ``J v`` one forward-mode product of
        ``f`` at the step's start; ``J`` is never formed and a problem's
        ``jac`` is not used. When to use: large systems (``N`` in the
        thousands, e.g. semi-discretised PDEs) whose JVP is cheap and whose
        ``M`` is well conditioned; a dense LU is ``O(N^3)`` per step. Caution:
        no preconditioner yet, so on badly conditioned ``M`` (large ``h``
        against a wide spectrum) the iteration may not converge; such a step
        is rejected (its proposal is NaN) and ``h`` shrinks, which costs
        steps. Set the solver's ``rtol`` well below the solve's own (its
        default, 1e-10 in float64, is safe). Gradients (discrete adjoint):
        one transposed Krylov solve per solve, not backpropagation through
        the iterations. ``sol.stats`` then has ``njac = nlu = 0`` and
        ``nkrylov`` (Krylov iterations).

"""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Rosenbrock23(_Stiff):
    """L-stable 2(3) Rosenbrock--W method (MATLAB ``ode23s``).

    Two evaluations of ``f``, one Jacobian, one LU and three solves per step;
    the third stage (at the step's end, shared with the next step) gives a
    3rd-order error estimate and the 2nd-order solution has a free
    (C^1) dense output. A W-method: its order does not depend on the exact
    Jacobian. When to use: loose tolerances (rtol around 1e-3 to 1e-2),
    rough right-hand sides; for rtol below 1e-4 prefer `Rodas5`.
    {linsolve}
    References: Shampine & Reichelt, "The MATLAB ODE suite", SIAM J. Sci.
    Comput. 18(1), 1997; OrdinaryDiffEq.jl ``Rosenbrock23``.
    """

    linsolve: Any = None

    name = "Rosenbrock23"
    order = 2
    error_order = 2  # the estimate is the local error of the 2nd-order solution, O(h^3)
    dense_rows = 2
    dense_nfe = 0
    d = 1.0 / (2.0 + math.sqrt(2.0))
    e32 = 6.0 + math.sqrt(2.0)

    def __post_init__(self):
        object.__setattr__(self, "linsolve", check_linsolve(self.name, self.linsolve))

    def _step(self, fn, t, y, f, h, carry) -> MethodStep:
        layout = Layout(y)
        g = self._vector_fn(fn, layout)
        yv, f0 = layout.vec(y), layout.vec(f)
        d = self.d
        w, dt = self._factorise(fn, g, layout, t, yv, 1.0 / (d * h))
        # With M = I/(d h) - J, W^{-1} x = M^{-1} x / (d h) for W = I - d h J.
        inv = 1.0 / (d * h)
        k1 = w.solve(inv * (f0 + (d * h) * dt))
        f1 = g(t + 0.5 * h, yv + 0.5 * h * k1)
        k2 = w.solve(inv * (f1 - k1)) + k1
        y1 = yv + h * k2
        f2 = g(t + h, y1)
        k3 = w.solve(inv * (f2 - self.e32 * (k2 - f1) - 2.0 * (k1 - f0) + (d * h) * dt))
        err = (h / 6.0) * (k1 - 2.0 * k2 + k3)
        rows = tf.stack([k1, k2], axis=0)
        carry, (y1, err) = self._finish(w, carry, 3, [y1, err])
        return MethodStep(layout.unvec(y1), layout.unvec(f2), layout.unvec(err), layout.unvec_rows(rows), 2, carry)

    def dense(self, fn, t, y, h, step):
        return step.data, 0

    def interpolate(self, theta, y0, h, rows):
        d = self.d
        th = theta[:, None]
        w = tf.concat([th * (1.0 - th), th * (th - 2.0 * d)], axis=1) / (1.0 - 2.0 * d)
        return interpolate_rows(w, y0, h, rows)


# --------------------------------------------------------------------------- Rodas5
# Coefficients of RODAS5 in the transformed form of Hairer & Wanner (Solving
# ODEs II, Sec. IV.7, eq. 7.4'): stage points y + sum_j A_ij k_j, right-hand
# sides f(t + c_i h, .) + sum_j (C_ij / h) k_j + h d_i df/dt, solves with
# M = I/(gamma h) - J. Values as tabulated by OrdinaryDiffEq.jl
# (src/tableaus/rosenbrock_tableaus.jl, `Rodas5Tableau`), from Di Marzo's
# thesis (Geneva, 1993) and Hairer's RODAS code. Stages 6--8 start from the
# previous stage point plus the previous increment (stiffly accurate), so
# y1 = u_8 + k_8 and k_8 is the error estimate.
_RODAS5_A = {
    2: [2.0],
    3: [3.040894194418781, 1.041747909077569],
    4: [2.576417536461461, 1.622083060776640, -0.9089668560264532],
    5: [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
    6: [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062],
}
_RODAS5_C = {
    2: [-10.31323885133993],
    3: [-21.04823117650003, -7.234992135176716],
    4: [32.22751541853323, -4.943732386540191, 19.44922031041879],
    5: [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
    6: [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147],
    7: [34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365, 1.408950972071624,
        -6.551835421242162],
    8: [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503, -31.58359187223370,
        -6.685968952921985, -5.810979938412932],
}
_RODAS5_GAMMA = 0.19
_RODAS5_CT = {2: 0.38, 3: 0.3878509998321533, 4: 0.4839718937873840, 5: 0.4570477008819580, 6: 1.0, 7: 1.0, 8: 1.0}
_RODAS5_D = {1: 0.19, 2: -0.1823079225333714636, 3: -0.319231832186874912, 4: 0.3449828624725343,
             5: -0.377417564392089818}
# Dense output: y(theta) = (1 - theta) y0 + theta (y1 + (1 - theta)(K1 + theta (K2 + theta K3))),
# K_r = sum_j H[r, j] k_j.
_RODAS5_H = np.array([
    [27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979, -4.699151156849391,
     -1.6008677469422725, -1.5306074446748028, -1.3929872940716344],
    [44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154, -181.91095152160645,
     3.4116351403665033, 2.5793540257308067, 2.2435122582734066],
    [-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676, 183.21182741427398,
     -7.480257918273637, -5.792426076169686, -5.32503859794143],
])


def _lincomb(coefs, vecs):
    out = None
    for c, v in zip(coefs, vecs):
        if c == 0.0:
            continue
        out = c * v if out is None else out + c * v
    return out


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Rodas5(_Stiff):
    """Rodas5: 5(4) stiffly accurate Rosenbrock method with 4th-order dense output.

    Eight stages (seven new evaluations of ``f`` plus one at the end, shared
    with the next step), one Jacobian, one LU and eight solves per step.
    L-stable and stiffly accurate: the default stiff method, efficient from
    rtol 1e-3 down to about 1e-10. Needs the exact Jacobian (not a W-method):
    a user ``jac`` must be correct (with a Krylov ``linsolve``, the solves
    must be accurate: keep the solver's ``rtol`` tight).
    {linsolve}
    References: Hairer & Wanner, Solving ODEs II, Sec. IV.7 (RODAS); Di Marzo,
    "RODAS5(4) -- Méthodes de Rosenbrock d'ordre 5(4) adaptées aux problèmes
    différentiels-algébriques", Geneva, 1993; coefficients as in
    OrdinaryDiffEq.jl's ``Rodas5Tableau``.
    """

    linsolve: Any = None

    name = "Rodas5"
    order = 5
    error_order = 4
    dense_rows = 4
    dense_nfe = 0
    gamma = _RODAS5_GAMMA

    def __post_init__(self):
        object.__setattr__(self, "linsolve", check_linsolve(self.name, self.linsolve))

    def _step(self, fn, t, y, f, h, carry) -> MethodStep:
        layout = Layout(y)
        g = self._vector_fn(fn, layout)
        yv, f0 = layout.vec(y), layout.vec(f)
        w, dt = self._factorise(fn, g, layout, t, yv, 1.0 / (self.gamma * h))
        inv_h = 1.0 / h
        ks = []
        u = yv
        for i in range(1, 9):
            if i == 1:
                fi = f0
            else:
                if i <= 6:
                    u = yv + _lincomb(_RODAS5_A[i], ks)
                else:
                    u = u + ks[-1]
                fi = g(t + _RODAS5_CT[i] * h, u)
            rhs = fi
            if i > 1:
                rhs = rhs + inv_h * _lincomb(_RODAS5_C[i], ks)
            if i in _RODAS5_D:
                rhs = rhs + (_RODAS5_D[i] * h) * dt
            ks.append(w.solve(rhs))
        y1 = u + ks[-1]
        f1 = g(t + h, y1)
        carry, (y1, err) = self._finish(w, carry, 8, [y1, ks[-1]])
        return MethodStep(layout.unvec(y1), layout.unvec(f1), layout.unvec(err), tf.stack(ks, 0), 8, carry)

    def dense(self, fn, t, y, h, step):
        layout = Layout(y)
        ks = step.data  # [8, N]
        kk = tf.matmul(tf.constant(_RODAS5_H, ks.dtype), ks)  # [3, N]
        dy = layout.vec(step.y1) - layout.vec(y)
        rows = tf.concat([dy[None], kk], axis=0) / h
        return layout.unvec_rows(rows), 0

    def interpolate(self, theta, y0, h, rows):
        th = theta[:, None]
        s = th * (1.0 - th)
        w = tf.concat([th, s, s * th, s * th * th], axis=1)
        return interpolate_rows(w, y0, h, rows)


# One text for both Rosenbrock methods' `linsolve` argument.
Rosenbrock23.__doc__ = Rosenbrock23.__doc__.replace("    {linsolve}\n", _LINSOLVE_DOC)
Rodas5.__doc__ = Rodas5.__doc__.replace("    {linsolve}\n", _LINSOLVE_DOC)
