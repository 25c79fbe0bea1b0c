"""Automatic stiffness detection and switching: `AutoTsit5Rodas5`.

One method of the protocol that takes each step with either `Tsit5` (cheap,
explicit) or `Rodas5` (stiff), chosen per step with `tf.cond` from a flag in
its carry. Stiffness is measured on two evaluations of ``f`` at two nearby
points ``a`` and ``b`` near the end of the step (Tsit5: its 6th stage point
and the proposal, both evaluated already; Rodas5: its last stage point
``y1 - k8``, one extra evaluation, and the proposal):
``rho = ||f(b) - f(a)|| / ||b - a||`` estimates the dominant eigenvalue's
modulus, and ``h rho`` is compared with the size of Tsit5's stability
region along the negative axis (about 3.5). As in
Hairer's DOPRI5 and SciML's ``AutoSwitch``, a switch needs several
consecutive attempts agreeing (hysteresis), so that one noisy estimate does
not flip the method back and forth.

Both dense outputs are quartic polynomials in ``theta`` without a constant
term, so every step is recorded as the same four monomial coefficient rows
and interpolated by one formula, whichever method took it.

Cost while non-stiff (Lotka--Volterra, interleaved medians): 1.02--1.11x
Tsit5's time under XLA, 0.9--1.14x in graph mode; gradients cost more
(reverse mode through a conditional keeps both branches' intermediates:
DiscreteAdjoint 1.2--1.4x under XLA, 2.2x in graph mode), and every trace
compiles Rodas5 too (first calls 2--25x longer). The estimate can miss the
fast mode at tight tolerances (Robertson at rtol 1e-9). Hence not the
default; see docs/stiff.md.

References: Hairer & Wanner, Solving ODEs I, Sec. IV.2 (stiffness detection
in DOPRI5); Shampine, "Stiffness and nonstiff differential equation solvers
II", 1977; Petzold, LSODA (SIAM J. Sci. Stat. Comput. 4(1), 1983); SciML
OrdinaryDiffEq.jl ``AutoTsit5(Rodas5())``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from .. import tfcompat
from . import rk
from .linear import Layout
from .matrixfree import KRYLOV_SOLVERS, check_linsolve
from .methods import MethodStep, ODEMethod, Tsit5
from .rosenbrock import Rodas5, StiffCounters, interpolate_rows

__all__ = ["AutoTsit5Rodas5"]


class _AutoCarry(NamedTuple):
    stiff: tf.Tensor  # bool: the next step uses Rodas5
    streak: tf.Tensor  # consecutive attempts that argue for switching
    counters: StiffCounters
    nonstiff_steps: tf.Tensor
    stiff_steps: tf.Tensor
    switches: tf.Tensor


_TSIT5 = Tsit5()
_RODAS5 = Rodas5()
# Both interpolants are y0 + h P(theta) with P a polynomial of degree 4 and
# P(0) = 0, so one dense format serves both: the coefficients c_1..c_4 of
# theta^1..theta^4. Tsit5: c_j = sum_r dense[r, j] k_r (its 7 stages).
_TSIT5_TO_MONOMIAL = np.asarray(_TSIT5.tableau.dense[list(_TSIT5.tableau.dense_rows)], np.float64).T  # [4, 7]
# Rodas5's rows R_0..R_3 (see `Rodas5.dense`) weigh theta, theta (1 - theta),
# theta^2 (1 - theta), theta^3 (1 - theta).
_RODAS5_TO_MONOMIAL = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 0.0, -1.0, 1.0],
                                [0.0, 0.0, 0.0, -1.0]])
_DEGREE = 4
_RODAS5_NFE, _RODAS5_SOLVES = 8, 8  # per Rodas5 step (one Jacobian, one LU)


def _monomial(matrix, rows: list) -> list:
    """``matrix @ rows`` leaf by leaf: ``[R, *leaf]`` -> ``[4, *leaf]`` monomial coefficients."""
    out = []
    for r in rows:
        flat = tf.reshape(r, [r.shape[0], -1])
        c = tf.matmul(tf.constant(matrix, r.dtype), flat)
        out.append(tf.reshape(c, [_DEGREE] + r.shape[1:].as_list()))
    return out


def _sq_dists(fa, fb, a, b):
    """``(||f(b) - f(a)||^2, ||b - a||^2)``: their ratio is ``rho^2`` (no gradient)."""
    num2 = tf.add_n([tf.reduce_sum(tf.square(x - y)) for x, y in zip(fb, fa)])
    den2 = tf.add_n([tf.reduce_sum(tf.square(x - y)) for x, y in zip(b, a)])
    return tf.stop_gradient(num2), tf.stop_gradient(den2)


@dataclasses.dataclass(frozen=True, eq=True)
class AutoTsit5Rodas5(ODEMethod):
    """Tsit5 while the problem is not stiff, Rodas5 while it is; switches per step.

    Use when stiffness is unknown or appears only on part of the interval
    (a fast transient, a chemical front). ``sol.stats`` adds
    ``nonstiff_steps``, ``stiff_steps`` (attempts with each method),
    ``switches`` and the stiff counters (``njac``, ``nlu``, ``nsolve``).

    Args:
      stiff_threshold: ``h rho`` above which a Tsit5 step counts as
        stability-limited (Tsit5's real stability boundary is about 3.5).
      nonstiff_threshold: ``h rho`` below which a Rodas5 step could have been
        taken by Tsit5.
      switch_after: consecutive attempts needed to switch (either way).
      linsolve: the stiff steps' linear solver, as `Rodas5`'s: None (dense
        LU), `sensode.linsolve.BlockDiagonalLU(b)` or a Krylov solver
        (``GMRES(...)``, ``BiCGStab(...)``; ``sol.stats`` then adds
        ``nkrylov`` and has ``njac = nlu = 0``).

    References: see the module docstring.
    """

    stiff_threshold: float = 3.0
    nonstiff_threshold: float = 1.0
    switch_after: int = 5
    linsolve: Any = None

    def __post_init__(self):
        object.__setattr__(self, "linsolve", check_linsolve(self.name, self.linsolve))

    name = "AutoTsit5Rodas5"
    order = 5
    error_order = 4
    stiff = True
    dense_rows = _DEGREE
    dense_nfe = 0

    def init(self, fn, t0, y0, f0):
        Layout(y0, repr(self))
        z = tf.constant(0, tf.int32)
        return _AutoCarry(tf.constant(False), z, StiffCounters.zeros(), z, z, z)

    def step(self, fn, t, y, f, h, carry) -> MethodStep:
        tab = _TSIT5.tableau
        # Few tensors cross the conditional (each costs a switch or merge node
        # per step outside XLA): the counters and evaluations are derived from
        # the flag outside it, and each branch returns only its vote.
        h2 = tf.square(tf.stop_gradient(h))

        def nonstiff_branch():
            res = rk.rk_step(fn, tab, t, y, f, h)
            stages = res.stages
            a = [yy + h * sum(float(c) * k[i] for c, k in zip(tab.a[5, :5], stages) if c != 0.0)
                 for i, yy in enumerate(y)]  # the 6th stage point (c6 = 1)
            num2, den2 = _sq_dists(stages[5], res.f_new, a, res.y1)
            ks = [tf.stack([stages[i][leaf] for i in tab.dense_rows], axis=0) for leaf in range(len(y))]
            rows = _monomial(_TSIT5_TO_MONOMIAL, ks)
            out = res.y1, res.f_new, res.err, rows, h2 * num2 > self.stiff_threshold ** 2 * den2
            return out + (tf.constant(0, tf.int32),) if krylov else out

        rodas = _RODAS5 if self.linsolve is None else Rodas5(linsolve=self.linsolve)
        krylov = isinstance(self.linsolve, KRYLOV_SOLVERS)

        def stiff_branch():
            st = rodas.step(fn, t, y, f, h, StiffCounters.zeros())
            rows, _ = rodas.dense(fn, t, y, h, st)
            num2, den2 = _rodas_sq_dists(fn, t, h, y, st)
            argues = h2 * num2 <= self.nonstiff_threshold ** 2 * den2
            out = st.y1, st.f1, st.err, _monomial(_RODAS5_TO_MONOMIAL, rows), argues
            return out + (st.carry.nkrylov,) if krylov else out

        if not tf.executing_eagerly() and not tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
            # Outside XLA a conditional is lowered to switch/merge dataflow, and the
            # executor walks every op of the untaken branch each step (hundreds
            # for Rodas5's Jacobian): behind one call, the untaken stiff branch
            # costs one node.
            stiff_branch = tf.function(stiff_branch, experimental_attributes={"_noinline": True})
        y1, f1, err, rows, argues, *nkrylov = tf.cond(carry.stiff, stiff_branch, nonstiff_branch)
        streak = tf.where(argues, carry.streak + 1, 0)
        switch = streak >= self.switch_after
        s = tf.cast(carry.stiff, tf.int32)
        new_carry = _AutoCarry(
            stiff=tf.math.logical_xor(carry.stiff, switch),
            streak=tf.where(switch, 0, streak),
            counters=carry.counters.add(njac=0 if krylov else s, nlu=0 if krylov else s, nsolve=_RODAS5_SOLVES * s,
                                        nkrylov=nkrylov[0] if krylov else 0),
            nonstiff_steps=carry.nonstiff_steps + 1 - s,
            stiff_steps=carry.stiff_steps + s,
            switches=carry.switches + tf.cast(switch, tf.int32),
        )
        nfe = tab.stages + (_RODAS5_NFE + 1 - tab.stages) * s
        return MethodStep(list(y1), list(f1), list(err), list(rows), nfe, new_carry)

    def dense(self, fn, t, y, h, step):
        return step.data, 0

    def interpolate(self, theta, y0, h, rows):
        th = theta[:, None]
        th2 = th * th
        w = tf.concat([th, th2, th2 * th, th2 * th2], axis=1)  # [M, 4]
        return interpolate_rows(w, y0, h, rows)

    def stats(self, carry) -> dict:
        out = carry.counters.as_stats(krylov=isinstance(self.linsolve, KRYLOV_SOLVERS))
        out.update(nonstiff_steps=carry.nonstiff_steps, stiff_steps=carry.stiff_steps, switches=carry.switches)
        return out


def _rodas_sq_dists(fn, t, h, y, st):
    """Eigenvalue estimate after a Rodas5 step, from its last two increments.

    ``y1 - k8`` is the 8th stage point; one extra evaluation there (paid only
    on stiff steps) compared with ``f(y1)``.
    """
    layout = Layout(y)
    k8 = st.data[-1]
    a = layout.unvec(layout.vec(st.y1) - k8)
    fa = fn(t + h, a)
    return _sq_dists(fa, st.f1, a, st.y1)
