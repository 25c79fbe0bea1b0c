"""ODE methods, named as in DifferentialEquations.jl.

Each method is a thin object around a `ButcherTableau`; all of them run through
the same generic Runge--Kutta step and the same stepping loop.
"""

from __future__ import annotations

from . import tableaus as _tab

__all__ = ["ExplicitRK", "Euler", "Midpoint", "Heun", "RK4", "BS3", "DP5", "Tsit5", "DP8"]


class ExplicitRK:
    """An explicit Runge--Kutta method given by a tableau.

    Fixed-step methods (no embedded error estimate) need ``dt`` in `solve`;
    adaptive ones use it, if given, as the first step.
    """

    tableau: _tab.ButcherTableau

    def __init__(self, tableau: _tab.ButcherTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        if getattr(self, "tableau", None) is None:
            raise TypeError("ExplicitRK needs a `tableau`")

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def order(self) -> int:
        return self.tableau.order

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

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
