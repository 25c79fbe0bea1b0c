"""Automatic stiffness detection and switching: `AutoTsit5Rodas5`.

One method of the protocol that takes each step with either `Tsit5` (cheap,
explicit) or `Rodas5` (stiff), chosen per step with `tf.cond` from a flag in
its carry. Stiffness is measured on two evaluations of ``f`` at the end of
the step that both methods already make, at two nearby points ``a`` and
``b`` (Tsit5: its 6th stage and the proposal; Rodas5: its 6th stage point
and the proposal): ``rho = ||f(b) - f(a)|| / ||b - a||`` estimates the
dominant eigenvalue's modulus, and ``h rho`` is compared with the size of
Tsit5's stability region along the negative axis (about 3.5). As in
Hairer's DOPRI5 and SciML's ``AutoSwitch``, a switch needs several
consecutive attempts agreeing (hysteresis), so that one noisy estimate does
not flip the method back and forth.

The dense output of a step carries a flag row saying which method took it,
so save points and records interpolate with the right formula.

References: Hairer & Wanner, Solving ODEs I, Sec. IV.2 (stiffness detection
in DOPRI5); Shampine, "Stiffness and nonstiff differential equation solvers
II", 1977; Petzold, LSODA (SIAM J. Sci. Stat. Comput. 4(1), 1983); SciML
OrdinaryDiffEq.jl ``AutoTsit5(Rodas5())``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from . import rk
from .linear import Layout
from .methods import MethodStep, ODEMethod, Tsit5
from .rosenbrock import Rodas5, StiffCounters

__all__ = ["AutoTsit5Rodas5"]


class _AutoCarry(NamedTuple):
    stiff: tf.Tensor  # bool: the next step uses Rodas5
    streak: tf.Tensor  # consecutive attempts that argue for switching
    counters: StiffCounters
    nonstiff_steps: tf.Tensor
    stiff_steps: tf.Tensor
    switches: tf.Tensor


def _rho(fa, fb, a, b):
    num = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(x - y)) for x, y in zip(fb, fa)]))
    den = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(x - y)) for x, y in zip(b, a)]))
    return tf.math.divide_no_nan(num, den)


@dataclasses.dataclass(frozen=True, eq=True)
class AutoTsit5Rodas5(ODEMethod):
    """Tsit5 while the problem is not stiff, Rodas5 while it is; switches per step.

    Use when stiffness is unknown or appears only on part of the interval
    (a fast transient, a chemical front). Costs nothing extra while non-stiff
    (the estimate reuses Tsit5's evaluations). ``sol.stats`` adds
    ``nonstiff_steps``, ``stiff_steps``, ``switches`` and the stiff counters
    (``njac``, ``nlu``, ``nsolve``).

    Args:
      stiff_threshold: ``h rho`` above which a Tsit5 step counts as
        stability-limited (Tsit5's real stability boundary is about 3.5).
      nonstiff_threshold: ``h rho`` below which a Rodas5 step could have been
        taken by Tsit5.
      switch_after: consecutive attempts needed to switch (either way).

    References: see the module docstring.
    """

    stiff_threshold: float = 3.0
    nonstiff_threshold: float = 1.0
    switch_after: int = 5

    name = "AutoTsit5Rodas5"
    order = 5
    error_order = 4
    stiff = True

    @property
    def dense_rows(self):
        return 1 + Tsit5().dense_rows + Rodas5().dense_rows

    dense_nfe = 0

    def init(self, fn, t0, y0, f0):
        Layout(y0, repr(self))
        z = tf.constant(0, tf.int32)
        return _AutoCarry(tf.constant(False), z, StiffCounters.zeros(), z, z, z)

    def step(self, fn, t, y, f, h, carry) -> MethodStep:
        explicit, stiff = Tsit5(), Rodas5()
        zeros_rows = lambda m: [tf.zeros(tf.concat([[m.dense_rows], tf.shape(x)], 0), x.dtype) for x in y]  # noqa

        def nonstiff_branch():
            res = rk.rk_step(fn, explicit.tableau, t, y, f, h)
            stages = res.stages
            a = [yy + h * sum(float(c) * k[i] for c, k in zip(explicit.tableau.a[5, :5], stages) if c != 0.0)
                 for i, yy in enumerate(y)]  # the 6th stage point (c6 = 1)
            rho = _rho(stages[5], res.f_new, a, res.y1)
            rows, _ = explicit.dense(fn, t, y, h, MethodStep(res.y1, res.f_new, None, stages, 0, ()))
            nfe = tf.constant(explicit.tableau.stages)
            return res.y1, res.f_new, res.err, rows, zeros_rows(stiff), rho, nfe, carry.counters

        def stiff_branch():
            st = stiff.step(fn, t, y, f, h, carry.counters)
            rows, _ = stiff.dense(fn, t, y, h, st)
            rho = _rodas_rho(fn, t, h, y, st)
            return st.y1, st.f1, st.err, zeros_rows(explicit), rows, rho, tf.constant(st.nfe) + 1, st.carry

        y1, f1, err, rk_rows, ro_rows, rho, nfe, counters = tf.cond(carry.stiff, stiff_branch, nonstiff_branch)
        hr = tf.abs(h) * tf.stop_gradient(rho)
        argues = tf.where(carry.stiff, hr < self.nonstiff_threshold, hr > self.stiff_threshold)
        streak = tf.where(argues, carry.streak + 1, 0)
        switch = streak >= self.switch_after
        flag = tf.cast(carry.stiff, y[0].dtype)
        rows = [tf.concat([flag * tf.ones_like(x[None]), a, b], axis=0) for x, a, b in zip(y, rk_rows, ro_rows)]
        one = tf.constant(1, tf.int32)
        new_carry = _AutoCarry(
            stiff=tf.math.logical_xor(carry.stiff, switch),
            streak=tf.where(switch, 0, streak),
            counters=counters,
            nonstiff_steps=carry.nonstiff_steps + tf.where(carry.stiff, 0, one),
            stiff_steps=carry.stiff_steps + tf.where(carry.stiff, one, 0),
            switches=carry.switches + tf.cast(switch, tf.int32),
        )
        return MethodStep(list(y1), list(f1), list(err), rows, nfe, new_carry)

    def dense(self, fn, t, y, h, step):
        return step.data, 0

    def interpolate(self, theta, y0, h, rows):
        n_rk = Tsit5().dense_rows
        per_point = h.shape.rank == 1
        ax = 1 if per_point else 0
        take = lambda r, a, b: r[:, a:b] if per_point else r[a:b]  # noqa: E731
        flags = [take(r, 0, 1) for r in rows]
        v_rk = Tsit5().interpolate(theta, y0, h, [take(r, 1, 1 + n_rk) for r in rows])
        v_ro = Rodas5().interpolate(theta, y0, h, [take(r, 1 + n_rk, None) for r in rows])
        out = []
        for f, a, b in zip(flags, v_rk, v_ro):
            f = tf.squeeze(f, axis=ax)  # [*leaf] or [M, *leaf]
            out.append(tf.where(f > 0.5, b, a))
        return out

    def stats(self, carry) -> dict:
        out = carry.counters.as_stats()
        out.update(nonstiff_steps=carry.nonstiff_steps, stiff_steps=carry.stiff_steps, switches=carry.switches)
        return out


def _rodas_rho(fn, t, h, y, st):
    """Eigenvalue estimate after a Rodas5 step, from its last two increments.

    ``y1 - k8`` is the 8th stage point; one extra evaluation there (paid only
    on stiff steps) compared with ``f(y1)``.
    """
    layout = Layout(y)
    k8 = st.data[-1]
    a = layout.unvec(layout.vec(st.y1) - k8)
    fa = fn(t + h, a)
    return _rho(fa, st.f1, a, st.y1)
