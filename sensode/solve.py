"""Entry points: `solve` and `odeint`.

They validate the inputs (raising at once, naming the argument), convert them
to tensors of one dtype, run the shared loop, and in eager mode raise
`SolverError` when the solve failed and ``throw=True``.
"""

from __future__ import annotations

import tensorflow as tf

from . import validation as _v
from .control import PIController
from .loop import integrate
from .problems import ODEProblem, check_u0
from .solution import ODESolution, raise_if_failed
from .solvers import ExplicitRK, Tsit5

__all__ = ["solve", "odeint"]

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-6
DEFAULT_MAX_STEPS = 10000


def solve(
    prob,
    alg=None,
    *,
    saveat=None,
    dt=None,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    dtmin=None,
    dtmax=None,
    controller: PIController | None = None,
    throw: bool = True,
) -> ODESolution:
    """Solve an `ODEProblem`.

    Args:
      prob: the `ODEProblem`.
      alg: an ODE method (`Tsit5()`, `DP5()`, `BS3()`, `DP8()`, or the
        fixed-step `Euler()`, `Midpoint()`, `Heun()`, `RK4()`); default `Tsit5()`.
      saveat: ``[T]`` times inside ``tspan``, monotone in the direction of
        integration; ``None`` saves ``t0`` and ``t1``. Values come from the
        method's dense output, so save points never shorten the steps.
      dt: step size of a fixed-step method (required there); for adaptive
        methods the first step (default: automatic, Hairer--Nørsett--Wanner).
      rtol, atol: relative and absolute tolerances (positive; ``atol`` may be a
        tensor broadcastable to ``u0``). Defaults 1e-3 and 1e-6, as in
        DifferentialEquations.jl.
      max_steps: static bound on the number of attempted steps.
      dtmin, dtmax: bounds on the step size magnitude (``dtmin`` defaults to
        a few ulps of ``t``).
      controller: a `PIController` (defaults by method order).
      throw: in eager mode, raise `SolverError` if the solve failed. Inside
        `tf.function` nothing raises: read ``sol.status``.

    Returns:
      `ODESolution` with ``t`` ``[T]``, ``u`` ``[T, *u0.shape]``, ``stats`` and
      ``status``.

    Raises:
      TypeError / ValueError: bad input, naming the argument.
      SolverError: eager mode, ``throw=True``, and the solve failed.
    """
    if not isinstance(prob, ODEProblem):
        raise TypeError(f"`prob` must be an ODEProblem, got {type(prob).__name__}")
    alg = Tsit5() if alg is None else alg
    if not isinstance(alg, ExplicitRK):
        raise TypeError(f"`alg` must be an ODE method such as sensode.Tsit5(), got {alg!r}")
    if controller is not None and not isinstance(controller, PIController):
        raise TypeError(f"`controller` must be a sensode.PIController, got {controller!r}")
    u0 = prob.u0
    dtype = u0.dtype
    t0 = _v.as_time(prob.tspan[0], dtype, "tspan")
    t1 = _v.as_time(prob.tspan[1], dtype, "tspan")
    _v.check_tspan(t0, t1)
    _v.check_p(prob.p, dtype)
    rtol = _v.check_tolerance(rtol, "rtol", dtype)
    atol = _v.check_tolerance(atol, "atol", dtype)
    max_steps = _v.check_max_steps(max_steps)
    if dt is None and not alg.adaptive:
        raise ValueError(f"`dt` is required: {alg!r} is a fixed-step method")
    if dt is not None:
        dt = _v.as_time(dt, dtype, "dt")
        dtv = _v.static_value(dt)
        if dtv is not None and not (dtv > 0 and abs(dtv) < float("inf")):
            raise ValueError(f"`dt` must be positive and finite, got {dtv}")
    if dtmin is not None:
        dtmin = _v.as_time(dtmin, dtype, "dtmin")
    if dtmax is not None:
        dtmax = _v.as_time(dtmax, dtype, "dtmax")
    if saveat is None:
        ts = tf.stack([t0, t1])
    else:
        ts = _v.as_time(saveat, dtype, "saveat")
        _v.check_saveat(ts, t0, t1)

    rhs = _v.checked_rhs(prob.f, u0, prob.p)
    res = integrate(
        rhs,
        u0,
        t0,
        t1,
        tableau=alg.tableau,
        saveat=ts,
        dt=dt,
        rtol=rtol,
        atol=atol,
        controller=controller,
        max_steps=max_steps,
        dtmin=dtmin,
        dtmax=dtmax,
    )
    sol = ODESolution(t=ts, u=res.ys, stats=res.stats, status=res.status, prob=prob, alg=alg)
    if throw and tf.executing_eagerly():
        raise_if_failed(sol.status, f"solve with {alg!r}")
    return sol


def odeint(f, u0, t, p=None, *, alg=None, **options):
    """Solve ``du/dt = f(t, u, p)`` and return ``u`` at the times ``t``.

    The torchdiffeq / TFP style interface: ``t[0]`` is the initial time and
    ``t[-1]`` the final one.

    Args:
      f: ``f(t, u, p) -> du/dt``.
      u0: initial state, floating tensor of any shape.
      t: ``[T]`` times (``T >= 2``), monotone.
      p: parameters (``None``, a tensor or a nest of tensors).
      alg: ODE method, default `Tsit5()`.
      **options: the keyword options of `solve` (``rtol``, ``atol``, ``dt``,
        ``max_steps``, ``throw``, ...); unknown ones raise `TypeError`.

    Returns:
      ``[T, *u0.shape]`` tensor.
    """
    if "saveat" in options:
        raise TypeError("odeint takes the save times as `t`; do not pass `saveat`")
    u0 = check_u0(u0)
    if not tf.is_tensor(t) and not isinstance(t, tf.Variable):
        t = tf.constant(t, u0.dtype)
    if t.shape.rank != 1 or (t.shape[0] is not None and t.shape[0] < 2):
        raise ValueError(f"`t` must be a 1-D tensor of at least two times, got shape {t.shape}")
    prob = ODEProblem(f, u0, (t[0], t[-1]), p)
    return solve(prob, alg, saveat=t, **options).u
