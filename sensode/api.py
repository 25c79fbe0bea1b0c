"""Entry points: `solve` and `odeint`.

`solve` dispatches on the problem: an `ODEProblem` is integrated here; a
`NonlinearProblem` or `SteadyStateProblem` goes to
`sensode.implicit.solve_nonlinear`.

They validate the inputs (raising at once, naming the argument), convert them
to tensors of one dtype, run the shared loop, and in eager mode raise
`SolverError` when the solve failed and ``throw=True``.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from . import compiled
from . import validation as _v
from .nonlinear.implicit import solve_nonlinear
from .ode.control import PIController, SolveOptions
from .ode.loop import nan_gradient_if
from .ode.methods import ODEMethod, Tsit5
from .ode.rosenbrock import Rodas5
from .params import Params, find_variables
from .problems import NonlinearProblem, ODEProblem, SteadyStateProblem, check_u0
from .sensitivity.adjoint_problem import ContinuousAdjoint
from .sensitivity.base import SensitivityAlgorithm, Spec
from .sensitivity.choice import solve_on_demand
from .sensitivity.direct import AdjointSensitivityResult, ForwardSensitivityResult
from .sensitivity.direct import adjoint_sensitivities as _adjoint_sensitivities
from .sensitivity.direct import forward_sensitivities as _forward_sensitivities
from .sensitivity.interpolating import InterpolatingAdjoint
from .solution import ODESolution, Status, raise_if_failed

__all__ = ["solve", "odeint", "forward_sensitivities", "adjoint_sensitivities", "StiffnessWarning"]

# The entry points use explicit TF control flow; AutoGraph would only slow
# tracing down (and re-read the source files).
_no_autograph = tf.autograph.experimental.do_not_convert

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-6
DEFAULT_MAX_STEPS = 10000


_NONLINEAR_ONLY = ("abstol", "reltol", "max_iters")
_ODE_ONLY = ("saveat", "dt", "rtol", "atol", "max_steps", "dtmin", "dtmax", "controller")
_ODE_DEFAULTS = dict(saveat=None, dt=None, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, max_steps=DEFAULT_MAX_STEPS,
                     dtmin=None, dtmax=None, controller=None)


@_no_autograph
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
    abstol=None,
    reltol=None,
    max_iters: int | None = None,
    sensealg=None,
    throw: bool = True,
    compile: bool = True,
):
    """Solve a problem: `ODEProblem`, `NonlinearProblem` or `SteadyStateProblem`.

    Args:
      prob: the problem.
      alg: for an ODE, a method (`Tsit5()`, `DP5()`, `BS3()`, `DP8()`, the
        fixed-step `Euler()`, `Midpoint()`, `Heun()`, `RK4()`, or the stiff
        `Rodas5()`, `Rosenbrock23()`, `Kvaerno5()`, `AutoTsit5Rodas5()`);
        default `Tsit5()`. Called eagerly with no ``alg``, no ``dt`` and the
        default ``max_steps``, a Tsit5 solve that stops with ``MAX_STEPS`` or
        ``DT_MIN`` (the sign of a stiff problem) is done again with
        `Rodas5()`, with a `StiffnessWarning` (not inside `tf.function`,
        where both programs would be compiled on every trace: pass a stiff
        method there). For ``f(u, p) = 0``, `NewtonRaphson()` (default),
        `NewtonKrylov()`, `AndersonAcceleration()` or `DynamicSS()`.
      saveat: (ODE) ``[T]`` times inside ``tspan``, monotone in the direction
        of integration; ``None`` saves ``t0`` and ``t1``. Values come from the
        method's dense output, so save points never shorten the steps. Inside
        `tf.function` times unknown at trace time are checked at run time: an
        unsorted or out-of-span ``saveat`` gives ``Status.INVALID_INPUT`` and NaN.
      dt: (ODE) step size of a fixed-step method (required there); for
        adaptive methods the first step (default: automatic).
      rtol, atol: (ODE) relative and absolute tolerances (positive; ``atol``
        may be a tensor broadcastable to ``u0``). Defaults 1e-3 and 1e-6, as
        in DifferentialEquations.jl.
      max_steps: (ODE) static bound on the number of attempted steps.
      dtmin, dtmax: (ODE) bounds on the step size magnitude (``dtmin``
        defaults to a few ulps of ``t``).
      controller: (ODE) a `PIController` (defaults by method order).
      abstol, reltol, max_iters: (``f(u, p) = 0``) convergence tolerances and
        the iteration bound; see `sensode.solve_nonlinear`.
      sensealg: how `tf.GradientTape` differentiates the solution: a
        `ForwardSensitivity`, `DiscreteAdjoint`, `BacksolveAdjoint`,
        `InterpolatingAdjoint` or `QuadratureAdjoint`; None picks one from the
        problem size (`default_sensealg`), and in eager mode with no tape
        recording skips sensitivity work altogether.
      throw: in eager mode, raise `SolverError` if the solve failed. Inside
        `tf.function` nothing raises: read ``sol.status``.
      compile: (ODE) called eagerly, run the solve as one XLA-compiled
        function, cached per call structure (`sensode.compiled`): the first
        call compiles (seconds), later ones run at compiled speed. False runs
        op by op (for debugging). Inside `tf.function` it has no effect.

    Returns:
      `ODESolution` (``t`` ``[T]``, ``u`` ``[T, *u0.shape]``, ``stats``,
      ``status``) or `NonlinearSolution`. A failed solve has a non-zero
      status, NaN at the save points it did not reach and NaN gradients.

    Raises:
      TypeError / ValueError: bad input, naming the argument (also an option
        that does not apply to the problem type).
      SolverError: eager mode, ``throw=True``, and the solve failed.
    """
    if isinstance(prob, (NonlinearProblem, SteadyStateProblem)):
        given = dict(saveat=saveat, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps, dtmin=dtmin, dtmax=dtmax,
                     controller=controller)
        wrong = [k for k in _ODE_ONLY if given[k] is not _ODE_DEFAULTS[k]]
        if wrong:
            raise TypeError(f"solve() option(s) {wrong} apply to ODEProblem only, not {type(prob).__name__}")
        extra = {} if max_iters is None else {"max_iters": max_iters}
        return solve_nonlinear(prob, alg, abstol=abstol, reltol=reltol, sensealg=sensealg, throw=throw,
                               compile=compile, **extra)
    wrong = [k for k, v in dict(abstol=abstol, reltol=reltol, max_iters=max_iters).items() if v is not None]
    if wrong:
        raise TypeError(f"solve() option(s) {wrong} apply to NonlinearProblem / SteadyStateProblem only")
    options = dict(saveat=saveat, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps, dtmin=dtmin, dtmax=dtmax,
                   controller=controller, sensealg=sensealg, compile=compile)
    retry = may_retry_stiff(alg, dt, max_steps)
    sol = _solve_ode(prob, alg, throw=throw and not retry, **options)
    if retry and looks_stiff(sol.status):
        stiff = Rodas5()
        warn_solved_again(
            f"solve: the default method {sol.alg!r} stopped with status {int(sol.status)} "
            f"({Status(int(sol.status)).name}) after {int(sol.stats['steps'])} steps", stiff)
        sol = _solve_ode(prob, stiff, throw=throw, **options)
    elif retry and throw:
        raise_if_failed(sol.status, f"solve with {sol.alg!r}")
    return sol


# Statuses of an explicit solve that a stiff method may cure.
_STIFF_SYMPTOMS = (Status.MAX_STEPS, Status.DT_MIN)


def _is_default_max_steps(max_steps) -> bool:
    return type(max_steps) is int and max_steps == DEFAULT_MAX_STEPS


def may_retry_stiff(alg, dt, max_steps) -> bool:
    """Whether a call may be solved again with the stiff default: eager, default method, ``dt`` and ``max_steps``."""
    return alg is None and dt is None and _is_default_max_steps(max_steps) and tf.executing_eagerly()


def looks_stiff(status) -> bool:
    """Whether any of the statuses (a tensor or array) is one a stiff method may cure.

    The default method ran out of steps (or of step size) with the default
    budget: the classic sign of a stiff problem.
    """
    return bool(np.isin(np.asarray(status), _STIFF_SYMPTOMS).any())


def warn_solved_again(what_happened: str, stiff) -> None:
    """The `StiffnessWarning` of a call solved again with ``stiff``, pointing at the user's line.

    Called from `solve` or `solve_ensemble`, both wrapped by AutoGraph's
    ``do_not_convert``: the user's frame is three above this one.
    """
    warnings.warn(
        f"{what_happened}; the problem looks stiff, so it was solved again with {stiff!r}. Pass "
        f"alg=sensode.{stiff!r} to skip the first attempt (inside tf.function there is no second attempt).",
        StiffnessWarning,
        stacklevel=4,
    )


class StiffnessWarning(UserWarning):
    """`solve` with the default method gave up on a problem that looks stiff and used `Rodas5`."""


def _solve_ode(prob, alg, *, saveat, dt, rtol, atol, max_steps, dtmin, dtmax, controller, sensealg, throw, compile):
    """`solve` of an `ODEProblem` with one method (``alg`` None: `Tsit5`)."""
    fast = None
    if compile and tf.executing_eagerly():
        fast = _fast_call("solve", prob, alg, sensealg, saveat, dt, rtol, atol, max_steps, dtmin, dtmax, controller)
        hit = None if fast is None else fast.lookup()
        if hit is not None:  # this structure compiled, these inputs validated: run it
            entry, flat, ts = hit
            u, stats, status = entry.function(flat)
            sol = ODESolution(t=ts, u=u, stats=stats, status=status, prob=prob, alg=entry.alg)
            if throw:
                raise_if_failed(status, f"solve with {entry.alg!r}")
            return sol
    alg, spec, ts, t0, t1, valid = prepare_ode_solve(
        prob, alg, saveat=saveat, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps,
        dtmin=dtmin, dtmax=dtmax, controller=controller, throw=throw,
    )
    if sensealg is not None and not isinstance(sensealg, SensitivityAlgorithm):
        raise TypeError(f"`sensealg` must be a sensode sensitivity algorithm, got {sensealg!r}")
    if compile and tf.executing_eagerly():
        u, stats, status = _solve_compiled(prob, alg, spec, ts, t0, t1, saveat is None, sensealg, fast)
    elif sensealg is None:
        u, stats, status = solve_on_demand(prob, spec, prob.u0, ts, t0, t1)
    else:
        u, stats, status = sensealg.solve(spec, prob.u0, ts, t0, t1, prob.p)
    if valid is not None:
        u, status = _mark_invalid(valid, u, status)
    sol = ODESolution(t=ts, u=u, stats=stats, status=status, prob=prob, alg=alg)
    if throw and tf.executing_eagerly():
        raise_if_failed(sol.status, f"solve with {alg!r}")
    return sol


def _eager_compiled(name, prob, alg, spec, ts, t0, t1, saveat_is_none, static, body, extra=(), fast=None):
    """Run ``body`` as the cached compiled function of this call structure (`sensode.compiled`).

    ``body(prob, options, extra)`` is called while tracing with ``prob``
    rebuilt from symbolic inputs (``u0``, ``tspan``, the floating leaves of
    ``p``) and ``options`` the keyword options of `solve` (symbolic
    tolerances, ``saveat``); ``extra`` are further tensors of the call.
    ``fast`` (a `compiled.FastCall` of this call, or None) records the entry
    and the inputs just validated, so that the next call with the same
    inputs skips validation (see `_fast_call`). Returns ``(outputs, entry)``
    (``entry`` None without ``fast``).
    """
    params = Params(prob.p)
    opts = spec.options
    converted = (t0, t1, ts, opts.rtol, opts.atol, opts.dt, opts.dtmin, opts.dtmax)
    present = tuple(x is not None for x in converted)
    extra_present = tuple(x is not None for x in extra)
    float_leaves = params.float_leaves
    key = (name, type(prob), compiled.problem_fields(prob), alg, opts.max_steps, opts.controller, saveat_is_none,
           static, compiled.signature(converted, extra, prob.p))

    def build():
        def run(*flat):
            it = iter(flat)
            u0 = next(it)
            t0, t1, ts, rtol, atol, dt, dtmin, dtmax = (next(it) if given else None for given in present)
            pf = [next(it) for _ in float_leaves]
            extra_ = tuple(next(it) if given else None for given in extra_present)
            # `remake` keeps every other field of the problem (``f``, ``jac``, ...).
            traced = prob.remake(u0=u0, tspan=(t0, t1), p=params.pack(pf))
            options = dict(saveat=None if saveat_is_none else ts, dt=dt, rtol=rtol, atol=atol,
                           max_steps=opts.max_steps, dtmin=dtmin, dtmax=dtmax, controller=opts.controller)
            return body(traced, options, extra_)

        return run

    function = compiled.cached_function(key, build)
    out = function(compiled.flat_inputs(prob.u0, converted, float_leaves, extra))
    return out, None if fast is None else fast.remember(function, alg, converted)


def _fast_call(name, prob, alg, static, saveat, dt, rtol, atol, max_steps, dtmin, dtmax, controller, extra=()):
    """The cheap key of an eager compiled call (`compiled.fast_call`), or None.

    Everything `prepare_ode_solve` checks by type is in the key (an entry
    exists only for a key whose call passed `prepare_ode_solve`); what it
    checks by value is compared with the values last validated for the entry.
    """
    if not isinstance(prob, ODEProblem):
        return None
    statics = (alg, static, controller, type(max_steps), max_steps)
    return compiled.fast_call(name, prob, (saveat, rtol, atol, dt, dtmin, dtmax), statics, extra)


def _solve_compiled(prob, alg, spec, ts, t0, t1, saveat_is_none, sensealg, fast):
    """`solve` of an ODE from eager code, through the cached compiled function."""

    def body(traced, options, _):
        sol = solve(traced, alg, sensealg=sensealg, throw=False, compile=False, **options)
        return sol.u, sol.stats, sol.status

    return _eager_compiled("solve", prob, alg, spec, ts, t0, t1, saveat_is_none, sensealg, body, fast=fast)[0]


def _mark_invalid(valid, u, status):
    """NaN values and gradients, and `Status.INVALID_INPUT`, where a run-time check failed."""
    bad = ~valid
    u = nan_gradient_if(bad, u + tf.where(bad, tf.constant(np.nan, u.dtype), tf.constant(0.0, u.dtype)))
    return u, tf.where(bad, tf.constant(Status.INVALID_INPUT, tf.int32), status)


def prepare_ode_solve(prob, alg, *, saveat, dt, rtol, atol, max_steps, dtmin, dtmax, controller, throw=True):
    """Validate an ODE solve's inputs, once for every entry point.

    Internal API (not in ``__all__``): the entry points here and the
    front-ends that build on one sample's solve (`sensode.gsa`'s ensembles)
    call it, so that they check their inputs as `solve` does.

    Returns ``(alg, spec, ts, t0, t1, valid)``: ``valid`` is None when every
    check ran at trace time, else a boolean tensor of the run-time checks.
    """
    if not isinstance(prob, ODEProblem):
        raise TypeError(f"`prob` must be an ODEProblem, got {type(prob).__name__}")
    alg = Tsit5() if alg is None else alg
    if not isinstance(alg, ODEMethod):
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
        valid = None
    else:
        ts = _v.as_time(saveat, dtype, "saveat")
        valid = _v.check_saveat(ts, t0, t1)
    options = SolveOptions(rtol=rtol, atol=atol, dt=dt, max_steps=max_steps, dtmin=dtmin, dtmax=dtmax,
                           controller=controller)
    jac = None if prob.jac is None else _v.checked_jac(prob.jac, u0)
    spec = Spec(f=_v.checked_f(prob.f, u0), method=alg, options=options, throw=throw, jac=jac)
    return alg, spec, ts, t0, t1, valid


@_no_autograph
def forward_sensitivities(
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
    compile: bool = True,
) -> ForwardSensitivityResult:
    """Solve an `ODEProblem` together with its forward sensitivities.

    Integrates ``dS/dt = (df/du) S + df/dθ`` for every entry of ``u0``, every
    floating leaf of ``p`` and every variable ``f`` reads, with the state and
    under the same error control.

    Args:
      prob, alg, saveat, dt, rtol, atol, max_steps, dtmin, dtmax, controller,
        throw, compile: as in `solve`.

    Returns:
      `ForwardSensitivityResult`: ``t`` ``[T]``, ``u`` ``[T, *u.shape]``,
      ``du_du0`` ``[T, *u.shape, *u0.shape]``, ``du_dp`` (nest like ``p``,
      each ``[T, *u.shape, *leaf.shape]``), ``du_dvars`` (list like
      ``variables``), ``stats``, ``status``.

    References: see `sensode.ForwardSensitivity`.
    """
    fast = None
    if compile and tf.executing_eagerly():
        fast = _fast_call("forward_sensitivities", prob, alg, None, saveat, dt, rtol, atol, max_steps, dtmin, dtmax,
                          controller)
        hit = None if fast is None else fast.lookup()
        if hit is not None:
            entry, flat, _ = hit
            res = entry.function(flat)._replace(variables=entry.variables)
            if throw:
                raise_if_failed(res.status, "forward sensitivity solve")
            return res
    alg, spec, ts, t0, t1, valid = prepare_ode_solve(
        prob, alg, saveat=saveat, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps,
        dtmin=dtmin, dtmax=dtmax, controller=controller,
    )
    if compile and tf.executing_eagerly():
        def body(traced, options, _):
            r = forward_sensitivities(traced, alg, throw=False, compile=False, **options)
            return r._replace(variables=[])  # Python objects: set outside

        res, entry = _eager_compiled("forward_sensitivities", prob, alg, spec, ts, t0, t1, saveat is None, None, body,
                                     fast=fast)
        # The variables f reads, found once per structure (like the trace itself).
        variables = find_variables(spec.f, t0, prob.u0, prob.p)
        if entry is not None:
            entry.variables = variables
        res = res._replace(variables=variables)
    else:
        res = _forward_sensitivities(prob, spec, ts, t0, t1)
    if valid is not None:
        u, status = _mark_invalid(valid, res.u, res.status)
        res = res._replace(u=u, status=status)
    if throw and tf.executing_eagerly():
        raise_if_failed(res.status, "forward sensitivity solve")
    return res


@_no_autograph
def adjoint_sensitivities(
    sol: ODESolution,
    alg=None,
    *,
    sensealg=None,
    dgdu_discrete=None,
    g=None,
    dt=None,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    dtmin=None,
    dtmax=None,
    controller: PIController | None = None,
    throw: bool = True,
    compile: bool = True,
) -> AdjointSensitivityResult:
    """Gradients of a loss on a solved problem by a continuous adjoint.

    The loss is ``L = sum_i <dgdu_discrete[i], u(sol.t[i])> + int_{t0}^{t1}
    g(t, u, p) dt`` (either part may be omitted): ``dgdu_discrete`` is the
    gradient of the discrete part at the save points, ``g`` a scalar running
    cost.

    Args:
      sol: the `ODESolution` of the forward solve (its problem and save times
        are used; the forward solve is repeated as the method needs).
      alg: ODE method for the forward and adjoint solves (default: the one of
        ``sol``).
      sensealg: `BacksolveAdjoint`, `InterpolatingAdjoint` (default) or
        `QuadratureAdjoint`.
      dgdu_discrete: ``[T, *u.shape]`` or None.
      g: ``g(t, u, p) -> scalar`` or None.
      dt, rtol, atol, max_steps, dtmin, dtmax, controller, throw, compile: as
        in `solve`.

    Returns:
      `AdjointSensitivityResult` with ``du0``, ``dp`` (nest like ``p``),
      ``dvars``, ``dt0``, ``dt1``, ``dts`` and the backward ``stats`` /
      ``status``.
    """
    if not isinstance(sol, ODESolution) or sol.prob is None:
        raise TypeError(f"`sol` must be the ODESolution of sensode.solve, got {type(sol).__name__}")
    sensealg = InterpolatingAdjoint() if sensealg is None else sensealg
    if not isinstance(sensealg, ContinuousAdjoint):
        raise TypeError(
            f"`sensealg` must be BacksolveAdjoint, InterpolatingAdjoint or QuadratureAdjoint, got {sensealg!r}"
        )
    if dgdu_discrete is None and g is None:
        raise ValueError("give `dgdu_discrete`, `g` or both: the loss is empty")
    if g is not None and not callable(g):
        raise TypeError(f"`g` must be callable as g(t, u, p), got {type(g).__name__}")
    alg = sol.alg if alg is None else alg
    fast = None
    if compile and tf.executing_eagerly():
        extra = (sol.u, sol.t, dgdu_discrete)
        fast = _fast_call("adjoint_sensitivities", sol.prob, alg, (sensealg, g), None, dt, rtol, atol, max_steps,
                          dtmin, dtmax, controller, extra=extra)
        hit = None if fast is None else fast.lookup()
        if hit is not None:
            entry, flat, _ = hit
            res = entry.function(flat)._replace(variables=entry.variables)
            if throw:
                raise_if_failed(res.status, f"backward solve of {type(sensealg).__name__}")
            return res
    alg, spec, ts, t0, t1, _ = prepare_ode_solve(
        sol.prob, alg, saveat=None, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps,
        dtmin=dtmin, dtmax=dtmax, controller=controller,
    )
    if dgdu_discrete is not None:
        dgdu_discrete = tf.convert_to_tensor(dgdu_discrete, sol.u.dtype)
        if not dgdu_discrete.shape.is_compatible_with(sol.u.shape):
            raise ValueError(
                f"`dgdu_discrete` must have the shape of sol.u {sol.u.shape}, got {dgdu_discrete.shape}"
            )
    if compile and tf.executing_eagerly():
        def body(traced, options, extra):
            u, t, dgdu = extra
            traced_sol = ODESolution(t=t, u=u, stats={}, status=tf.constant(0), prob=traced, alg=alg)
            options = {k: v for k, v in options.items() if k != "saveat"}
            r = adjoint_sensitivities(traced_sol, alg, sensealg=sensealg, dgdu_discrete=dgdu, g=g, throw=False,
                                      compile=False, **options)
            return r._replace(variables=[])

        res, entry = _eager_compiled("adjoint_sensitivities", sol.prob, alg, spec, ts, t0, t1, True, (sensealg, g),
                                     body, extra=(sol.u, sol.t, dgdu_discrete), fast=fast)
        variables = find_variables(spec.f, t0, sol.prob.u0, sol.prob.p)
        if entry is not None:
            entry.variables = variables
        res = res._replace(variables=variables)
    else:
        res = _adjoint_sensitivities(sol, spec, sensealg, dgdu_discrete, g)
    if throw and tf.executing_eagerly():
        raise_if_failed(res.status, f"backward solve of {type(sensealg).__name__}")
    return res


@_no_autograph
def odeint(
    f,
    u0,
    t,
    p=None,
    *,
    alg=None,
    dt=None,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    dtmin=None,
    dtmax=None,
    controller: PIController | None = None,
    sensealg=None,
    throw: bool = True,
    compile: bool = True,
    saveat=None,
):
    """Solve ``du/dt = f(t, u, p)`` and return ``u`` at the times ``t``.

    The torchdiffeq / TFP style interface: ``t[0]`` is the initial time and
    ``t[-1]`` the final one.

    Args:
      f: ``f(t, u, p) -> du/dt``.
      u0: initial state, floating tensor of any shape.
      t: ``[T]`` times (``T >= 2``), monotone.
      p: parameters (``None``, a tensor or a nest of tensors).
      alg, dt, rtol, atol, max_steps, dtmin, dtmax, controller, sensealg,
        throw, compile: as in `solve`.

      saveat: not accepted: the save times are ``t`` (raises `TypeError`).

    Returns:
      ``[T, *u0.shape]`` tensor.
    """
    if saveat is not None:
        raise TypeError("odeint takes the save times as `t`; do not pass `saveat`")
    u0 = check_u0(u0)
    t = _v.as_time(t, u0.dtype, "t")
    if t.shape.rank != 1 or (t.shape[0] is not None and t.shape[0] < 2):
        raise ValueError(f"`t` must be a 1-D tensor of at least two times, got shape {t.shape}")
    prob = ODEProblem(f, u0, (t[0], t[-1]), p)
    return solve(prob, alg, saveat=t, dt=dt, rtol=rtol, atol=atol, max_steps=max_steps, dtmin=dtmin, dtmax=dtmax,
                 controller=controller, sensealg=sensealg, throw=throw, compile=compile).u
