"""ODE methods: the protocol the stepping loop drives, and the explicit RK methods.

The loop (`sensode.ode.loop.integrate`) knows nothing about how a method
steps. It calls, on *flat lists* of state tensors:

* ``init(fn, t0, y0, f0) -> carry``: the method's own loop state (a nest of
  tensors: e.g. a cached Jacobian and its factorisation); ``()`` for explicit
  Runge--Kutta methods.
* ``with_tolerances(carry, rtol, atol) -> carry``: the carry given the
  solve's tolerances (scalar ``rtol``, ``atol`` scalar or broadcastable to
  the leaves), for methods with inner tolerances (Kvaerno5's Newton
  iteration); by default the carry unchanged.
* ``step(fn, t, y, f, h, carry) -> MethodStep``: one attempted step of size
  ``h`` (signed) from ``(t, y)`` with ``f = fn(t, y)``: the proposal, the
  derivative at its end (the next step's first stage), the error estimate,
  whatever the dense output needs, the evaluations spent and the new carry.
* ``error_ratio(step, y0, rtol, atol, include) -> scalar``: the error norm
  of a step, ``<= 1`` accepts it.
* ``dense(fn, t, y, h, step) -> (rows, nfe)``: the dense-output data of a
  step, one ``[dense_rows, *leaf]`` tensor per leaf (extra stages are paid
  for here, and only for steps that need them: ``dense_nfe`` says how many).
* ``interpolate(theta, y0, h, rows) -> list``: the state at fractions
  ``theta`` of steps, from their start ``y0`` and ``rows``.
* ``stats(carry) -> dict``: method-specific counters (Jacobians, LU
  factorisations, linear solves) added to ``sol.stats``.

``fn`` may be a `sensode.ode.linear.WithJacobian` (the problem's ``jac``):
stiff methods then take ``df/du`` from ``fn.jac`` instead of differentiating
``fn``.

Static facts: ``order`` (of the solution), ``error_order`` (of the embedded
estimate; the controller's exponent is ``1 / (error_order + 1)``),
``adaptive``, ``dense_rows``, ``dense_nfe`` and ``stiff`` (meant for stiff
problems). A stiff method is one more implementation of this protocol.

Method objects compare equal by type and tableau, so they can serve as
static keys (Keras configs, compiled-function caches).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import tensorflow as tf

from . import control, rk
from . import tableaus as _tab

__all__ = [
    "MethodStep",
    "ODEMethod",
    "ExplicitRK",
    "Euler",
    "Midpoint",
    "Heun",
    "RK4",
    "BS3",
    "DP5",
    "Tsit5",
    "DP8",
]

FlatFn = Callable[[tf.Tensor, list], list]

# Problems below this many interpolated numbers are "small": broadcast-and-sum
# (which XLA fuses into one loop) beats a matrix product's fixed cost there.
SMALL_WORK = 65536


class MethodStep(NamedTuple):
    """One attempted step, as a method returns it to the loop."""

    y1: list  # proposed state at t + h (flat)
    f1: list  # fn(t + h, y1): the next step's first stage
    err: Any  # method-specific error data, read by `error_ratio`
    data: Any  # what `dense` needs (e.g. the stages)
    nfe: Any  # evaluations of fn spent (Python int or int32 tensor)
    carry: Any  # the method's loop state after this attempt


class ODEMethod:
    """Base class of ODE methods: the protocol `sensode.ode.loop` drives.

    Subclasses set the static facts and implement the methods below; see the
    module docstring for the contract.
    """

    name: str = "?"
    order: int = 0
    error_order: int | None = None
    dense_rows: int = 0
    dense_nfe: int = 0
    stiff: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the method carries an embedded error estimate."""
        return self.error_order is not None

    def init(self, fn: FlatFn, t0, y0: list, f0: list):
        return ()

    def with_tolerances(self, carry, rtol, atol):
        return carry

    def step(self, fn: FlatFn, t, y: list, f: list, h, carry) -> MethodStep:
        raise NotImplementedError

    def error_ratio(self, step: MethodStep, y0: list, rtol, atol, include=None):
        return control.error_ratio(step.err, y0, step.y1, rtol, atol, include=include)

    def dense(self, fn: FlatFn, t, y: list, h, step: MethodStep):
        raise NotImplementedError

    def interpolate(self, theta, y0: list, h, rows: list) -> list:
        raise NotImplementedError

    def stats(self, carry) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExplicitRK(ODEMethod):
    """An explicit Runge--Kutta method given by a `ButcherTableau`.

    Fixed-step methods (no embedded error estimate) need ``dt`` in `solve`;
    adaptive ones use it, if given, as the first step.
    """

    tableau: _tab.ButcherTableau

    def __init__(self, tableau: _tab.ButcherTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        if getattr(self, "tableau", None) is None:
            raise TypeError("ExplicitRK needs a `tableau`")

    # Static facts, derived from the tableau.
    name = property(lambda self: self.tableau.name)
    order = property(lambda self: self.tableau.order)
    error_order = property(lambda self: self.tableau.error_order)
    dense_rows = property(lambda self: len(self.tableau.dense_rows))
    dense_nfe = property(lambda self: self.tableau.extra_stages)

    def step(self, fn, t, y, f, h, carry) -> MethodStep:
        tab = self.tableau
        res = rk.rk_step(fn, tab, t, y, f, h)
        return MethodStep(res.y1, res.f_new, (res.err, res.err_secondary), res.stages, tab.stages, carry)

    def error_ratio(self, step, y0, rtol, atol, include=None):
        err, err2 = step.err
        return control.error_ratio(err, y0, step.y1, rtol, atol, err2, include)

    def dense(self, fn, t, y, h, step):
        tab = self.tableau
        stages = rk.dense_stages(fn, tab, t, y, h, step.data) if tab.extra_stages else step.data
        rows = [tf.stack([stages[i][leaf] for i in tab.dense_rows], axis=0) for leaf in range(len(y))]
        return rows, tab.extra_stages

    def interpolate(self, theta, y0, h, rows):
        """``y0 + h sum_r w_r(theta) rows_r`` at ``theta`` ``[M]``.

        Either one step (``y0`` leaves ``[*leaf]``, ``h`` scalar, ``rows``
        ``[R, *leaf]``) or one step per point (``y0`` ``[M, *leaf]``, ``h``
        ``[M]``, ``rows`` ``[M, R, *leaf]``). Returns ``[M, *leaf]`` leaves.
        """
        w = rk.dense_weights(self.tableau, theta)  # [M, R]
        per_point = h.shape.rank == 1
        out = []
        for y, k in zip(y0, rows):
            leaf_rank = y.shape.rank - (1 if per_point else 0)
            if per_point:
                wk = tf.reshape(w, w.shape.concatenate([1] * leaf_rank))
                interp = tf.reduce_sum(wk * k, axis=1)
                hb = tf.reshape(h, [-1] + [1] * leaf_rank)
                out.append(y + hb * interp)
                continue
            size = y.shape.num_elements()
            n_t = theta.shape[0]
            if size is not None and n_t is not None and size * n_t * k.shape[0] <= SMALL_WORK:
                wk = tf.reshape(w, w.shape.concatenate([1] * leaf_rank))  # [M, R, 1...]
                interp = tf.reduce_sum(wk * k[None], axis=1)
            else:
                flat = tf.reshape(k, [k.shape[0], -1])
                interp = tf.reshape(tf.matmul(w, flat), tf.concat([tf.shape(theta), tf.shape(y)], 0))
            out.append(y[None] + h * interp)
        return out

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.tableau is other.tableau

    def __hash__(self) -> int:
        return hash((type(self), id(self.tableau)))


class Euler(ExplicitRK):
    """Forward Euler, order 1, fixed step. Dense output: cubic Hermite."""

    tableau = _tab.EULER


class Midpoint(ExplicitRK):
    """Explicit midpoint rule, order 2, fixed step. Dense output: cubic Hermite."""

    tableau = _tab.MIDPOINT


class Heun(ExplicitRK):
    """Heun's method (explicit trapezoid), order 2, fixed step."""

    tableau = _tab.HEUN


class RK4(ExplicitRK):
    """The classical Runge--Kutta method, order 4, fixed step."""

    tableau = _tab.RK4


class BS3(ExplicitRK):
    """Bogacki--Shampine 3(2), adaptive, cubic Hermite dense output.

    Cheap per step (3 evaluations); good at loose tolerances (rtol >= 1e-3).
    References: Bogacki & Shampine, Appl. Math. Lett. 2(4), 1989.
    """

    tableau = _tab.BS3


class DP5(ExplicitRK):
    """Dormand--Prince 5(4), adaptive, Shampine's 4th-order dense output.

    The tableau of MATLAB's ode45 and SciPy's RK45.
    References: Dormand & Prince, J. Comput. Appl. Math. 6, 1980; Shampine,
    Math. Comp. 46, 1986.
    """

    tableau = _tab.DP5


class Tsit5(ExplicitRK):
    """Tsitouras 5(4), adaptive, free 4th-order dense output.

    Usually a little more efficient than DP5; the default of `odeint`.
    References: Tsitouras, Comput. Math. Appl. 62(2), 2011.
    """

    tableau = _tab.TSIT5


class DP8(ExplicitRK):
    """Dormand--Prince 8(5,3) (DOP853), adaptive, 7th-order dense output.

    For tight tolerances (rtol <= 1e-8). The dense output costs three extra
    evaluations, spent only on steps that contain a save point.
    References: Hairer, Nørsett & Wanner, Solving ODEs I, Sec. II.10.
    """

    tableau = _tab.DP8
