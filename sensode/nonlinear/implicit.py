"""Differentiable solves of ``f(u, p) = 0``: the implicit (discrete) adjoint.

At a root ``u*(p)`` the implicit function theorem gives
``(df/du) du/dp = -df/dp``. For a scalar loss ``g(u*)`` the reverse-mode
gradient is therefore one *transposed* linear solve and one VJP,

    (df/du)^T lam = (dg/du)^T,        dg/dp = -lam^T df/dp,

whatever the method and the number of iterations that found ``u*``
(`DiscreteAdjoint`, also called `SteadyStateAdjoint`); forward mode is one
solve with ``df/dp`` as right-hand side, ``S = du/dp = -(df/du)^{-1} df/dp``
(`ForwardSensitivity`). The iterations themselves are never differentiated:
they run on `tf.stop_gradient` inputs inside `tf.custom_gradient`, so memory
does not grow with the iteration count.

Shapes: leading dimensions of ``u0`` are independent systems, the last one is
the system: ``u0`` of shape ``[*batch, n]`` is canonicalised to ``[B, n]``,
Jacobians are ``[B, n, n]`` (never one ``[B n, B n]`` matrix) and ``f`` must
act row-wise (row ``b`` of ``f(u, p)`` depends only on row ``b`` of ``u``).
A 1-D ``u0`` is one system; a scalar ``u0`` a system of one unknown.
"""

from __future__ import annotations

import collections
import math
import numbers

import numpy as np
import tensorflow as tf

from .. import compiled as _compiled
from .. import tfcompat
from .. import validation as _v
from .linsolve import LU, JacobianOperator, LinearSolver
from .methods import NewtonRaphson, NonlinearAlgorithm
from ..params import Params
from ..problems import NonlinearProblem, SteadyStateProblem
from ..sensitivity.discrete import DiscreteAdjoint
from ..sensitivity.forward import ForwardSensitivity
from ..solution import NonlinearSolution, SolverError, raise_if_failed

__all__ = ["solve_nonlinear", "DEFAULT_MAX_ITERS"]

DEFAULT_MAX_ITERS = 100

_BACKWARD_MESSAGE = (
    "implicit adjoint: the transposed linear solve (df/du)^T lam = dg/du failed; the Jacobian df/du "
    "at the solution is singular (or the iterative linsolve did not converge), so du/dp is not "
    "defined there"
)


def _default_tol(dtype) -> float:
    # eps^(2/3): 3.7e-11 in float64, 2.4e-5 in float32 -- tight enough for
    # gradients to carry most digits, loose enough to be reachable.
    return float(np.finfo(dtype.as_numpy_dtype).eps) ** (2.0 / 3.0)


_COMPILED: "collections.OrderedDict" = collections.OrderedDict()
_MAX_COMPILED = 32


def _graph_if_eager(fn, key=None, compile=True):
    """``fn`` as one compiled function when executing eagerly, else ``fn``.

    The methods and the Krylov solvers are `tf.while_loop`s: eagerly each
    iteration dispatches its ops one by one from Python, so a solve that
    hits ``max_iters`` (100 Newton steps, each up to 500 GMRES products)
    took minutes. ``key``: everything ``fn`` captures besides its tensor
    arguments (the problem function, the method, the tolerances, the shapes
    and the parameters' structure); calls with an equal key reuse the
    XLA-compiled function (``compile``; False: a plain graph). Without a key
    ``fn`` is traced again on every call (about 0.5 s for a 3-unknown Newton
    solve, against 0.2 ms compiled).
    """
    if not tf.executing_eagerly():
        return fn
    graph_fn = _COMPILED.get((key, compile)) if key is not None else None
    if graph_fn is None:
        graph_fn = tf.function(fn, autograph=False, jit_compile=bool(compile))
        graph_fn.concrete = {}
        if key is not None:
            _COMPILED[(key, compile)] = graph_fn
            while len(_COMPILED) > _MAX_COMPILED:
                _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end((key, compile))

    def call(*args):
        # Trace first: the tapes fn opens itself (Jacobians) must record. The
        # traced function is kept per argument shapes and called on the flat
        # tensors (`tfcompat.call_flat`): `tf.function`'s argument binding cost
        # more than the compiled solve (1.44 -> 0.66 ms eagerly for 3 unknowns).
        flat = tf.nest.flatten(args)
        if not all(isinstance(x, tf.Tensor) for x in flat):  # variables (the backward pass of those f reads)
            graph_fn.get_concrete_function(*args)
            with tfcompat.stop_recording():
                return graph_fn(*args)
        shapes = tuple((x.dtype, tuple(x.shape)) for x in flat)
        concrete = graph_fn.concrete.get(shapes)
        if concrete is None:
            concrete = graph_fn.concrete[shapes] = graph_fn.get_concrete_function(*args)
        # Then run with the caller's tapes paused: one that watches a variable
        # read by f would make TF build the gradient of the whole traced loop
        # (there is none for Lu, and none is needed: the implicit adjoint
        # replaces it). Variable reads still reach tf.custom_gradient's
        # watcher, which hands them to `grad`.
        with tfcompat.stop_recording():
            return tfcompat.call_flat(concrete, flat)

    return call


_TOLERANCES: dict = {}


def _tolerance(value, name, dtype):
    """`validation.check_tolerance`, remembered for Python numbers in eager calls.

    An eager call converted and checked its (usually default) tolerances
    again each time: ~0.2 ms of a ~2 ms solve. Invalid values raise and are
    not remembered.
    """
    if type(value) not in (float, int) or not tf.executing_eagerly():
        return _v.check_tolerance(value, name, dtype)
    key = (value, name, dtype)
    tol = _TOLERANCES.get(key)
    if tol is None:
        tol = _v.check_tolerance(value, name, dtype)
        if len(_TOLERANCES) > 64:
            _TOLERANCES.clear()
        _TOLERANCES[key] = tol
    return tol


def _reshape(x, shape):
    """``tf.reshape(x, shape)`` for a static ``shape``; eagerly, nothing when it already has that shape.

    An eager reshape to a Python list converts the list and, for ``[]``, takes
    TensorFlow's slow fallback (~0.1 ms each, three per solve).
    """
    if tf.executing_eagerly() and x.shape.as_list() == list(shape):
        return x
    return tf.reshape(x, tf.constant(shape, tf.int32) if tf.executing_eagerly() else shape)


def _validated(prob, alg, sensealg, abstol, reltol, max_iters):
    """Check `solve_nonlinear`'s inputs (raising, naming the argument).

    Returns ``(steady, alg, sensealg, adjoint linsolve, abstol, reltol, max_iters)``.
    """
    steady = isinstance(prob, SteadyStateProblem)
    if not isinstance(prob, (NonlinearProblem, SteadyStateProblem)):
        raise TypeError(f"`prob` must be a NonlinearProblem or SteadyStateProblem, got {type(prob).__name__}")
    alg = NewtonRaphson() if alg is None else alg
    if not isinstance(alg, NonlinearAlgorithm):
        raise TypeError(f"`alg` must be a nonlinear method such as sensode.NewtonRaphson(), got {alg!r}")
    if alg.needs_rhs and not steady:
        raise TypeError(f"{type(alg).__name__} integrates an ODE: use it with a SteadyStateProblem")
    sensealg = DiscreteAdjoint() if sensealg is None else sensealg
    if not isinstance(sensealg, (DiscreteAdjoint, ForwardSensitivity)):
        raise TypeError(
            "`sensealg` for f(u, p) = 0 must be DiscreteAdjoint (SteadyStateAdjoint) or ForwardSensitivity, "
            f"got {sensealg!r}"
        )
    if isinstance(sensealg, DiscreteAdjoint):
        if sensealg.checkpoints is not None:
            raise ValueError("`checkpoints` has no meaning for f(u, p) = 0: the implicit adjoint stores only u*")
        adj_linsolve = LU() if sensealg.linsolve is None else sensealg.linsolve
    else:
        adj_linsolve = alg._linsolve() if isinstance(alg, NewtonRaphson) else LU()
    if not isinstance(adj_linsolve, LinearSolver):
        raise TypeError(f"`linsolve` must be a sensode.linsolve solver, got {adj_linsolve!r}")

    u0 = prob.u0
    dtype = u0.dtype
    shape = u0.shape
    if not shape.is_fully_defined():
        raise ValueError(f"`u0` must have a static shape, got {shape}")
    _v.check_p(prob.p, dtype)
    abstol = _tolerance(_default_tol(dtype) if abstol is None else abstol, "abstol", dtype)
    reltol = _tolerance(_default_tol(dtype) if reltol is None else reltol, "reltol", dtype)
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 1:
        raise ValueError(f"`max_iters` must be a positive Python int (a static loop bound), got {max_iters!r}")
    max_iters = int(max_iters)

    return steady, alg, sensealg, adj_linsolve, abstol, reltol, max_iters


def solve_nonlinear(
    prob,
    alg: NonlinearAlgorithm | None = None,
    *,
    abstol=None,
    reltol=None,
    max_iters: int = DEFAULT_MAX_ITERS,
    sensealg=None,
    throw: bool = True,
    compile: bool = True,
) -> NonlinearSolution:
    """Solve ``f(u, p) = 0`` (or the steady state ``f(t, u, p) = 0``), differentiably.

    Args:
      prob: a `NonlinearProblem` (residual ``f(u, p)``) or a
        `SteadyStateProblem` (``f(t, u, p)``, evaluated at ``t = 0``; it
        should be autonomous). ``u0`` is the initial guess, ``[*batch, n]``
        float32 / float64 with a static shape; leading dimensions are
        independent systems and ``f`` must act row-wise on them.
      alg: `NewtonRaphson()` (default), `NewtonKrylov()`,
        `AndersonAcceleration()`, or `DynamicSS()` (steady states only).
      abstol, reltol: system ``b`` has converged when
        ``max|f(u_b)| <= abstol + reltol * min(max|u_b|, s_b)`` with
        ``s_b = max(max|u0_b|, max|f(u0_b)|)``: judged on the residual,
        and a runaway ``|u|`` cannot loosen it (see `sensode.nonlinear.methods`).
        Default ``eps^(2/3)`` for both (3.7e-11 in float64, 2.4e-5 in float32).
      max_iters: static bound on the iterations (for `DynamicSS`, on the
        integration windows).
      sensealg: `DiscreteAdjoint(linsolve=...)` (default; alias
        `SteadyStateAdjoint`) or `ForwardSensitivity()`. Both give the same
        gradients; `ForwardSensitivity` also fills ``sol.du_dp``.
      throw: in eager mode, raise `SolverError` if the solve failed. Inside
        `tf.function` nothing raises: read ``sol.status``. With
        ``throw=False`` the backward pass does not raise either: a failed
        forward or backward solve gives NaN gradients (for optimisers that
        treat such a trial as failed).
      compile: called eagerly, the iterations (and the backward linear
        solves) run as XLA-compiled functions cached per problem function,
        method, tolerances, shapes and parameter structure: the first call
        compiles, later ones run at compiled speed (a 3-unknown Newton solve:
        0.5 s per call traced again each time before, ~0.7 ms now, ~2 ms
        with its gradient). False: a plain graph, cached the same way
        (faster to build, slower to run). Ignored inside `tf.function`.

    Returns:
      `NonlinearSolution`. On failure (``sol.status != 0``) ``sol.u`` is NaN
      for every system that did not converge, and so is every gradient
      (``sol.resid_norm`` keeps the last residual). ``sol.u`` is differentiable with respect to ``p``
      (a tensor or a nest of tensors), to `tf.Variable`s read inside ``f``,
      and to ``u0`` (zero).

    Raises:
      TypeError / ValueError: bad input, naming the argument.
      SolverError: eager mode, ``throw=True`` and the solve failed; also
        (``throw=True``), when a gradient is taken in eager mode, if the backward linear solve
        fails (singular ``df/du`` at the solution). Inside `tf.function` the
        backward failure raises ``InvalidArgumentError`` when the graph runs;
        under XLA (where assertions are dropped) the gradients are NaN.
    """
    steady, alg, sensealg, adj_linsolve, abstol, reltol, max_iters = _validated(
        prob, alg, sensealg, abstol, reltol, max_iters)
    u0 = prob.u0
    dtype = u0.dtype
    shape = u0.shape
    dims = shape.as_list()
    n = dims[-1] if dims else 1
    nb = int(math.prod(dims[:-1])) if dims else 1
    canon = [nb, n]

    params = Params(prob.p)
    # What the traced closures below capture besides their tensor arguments: calls with an equal key share them.
    key = None
    if tf.executing_eagerly():
        key = (type(prob), prob.f, repr(alg), _compiled.value_key(abstol), _compiled.value_key(reltol), max_iters,
               tuple(dims), dtype.name, _compiled.signature(prob.p))
    # Reading a variable leaf here puts the read on the caller's tape, so its
    # gradient flows back to the variable through the custom gradient below.
    diff_leaves = [tf.cast(x, dtype) for x in params.float_leaves]
    rebuild = params.pack

    def user_f(u, p):
        return prob.f(tf.constant(0, dtype), u, p) if steady else prob.f(u, p)

    def residual(u_c, flat_diff):
        r = user_f(tf.reshape(u_c, shape), rebuild(flat_diff))
        r = tf.convert_to_tensor(r)
        if r.dtype != dtype:
            raise TypeError(f"`f` returned dtype {r.dtype.name}, but `u0` has dtype {dtype.name}")
        if r.shape != shape:
            raise ValueError(f"`f` returned shape {r.shape}, but `u0` has shape {shape}; f must have the shape of u")
        return tf.reshape(r, canon)

    def rhs_for(flat_diff):
        if not steady:
            return None
        return lambda t, u_c: tf.reshape(prob.f(t, tf.reshape(u_c, shape), rebuild(flat_diff)), canon)

    forward = {}

    @tf.custom_gradient
    def implicit_root(u0_c, *flat_diff):
        # Values only: stop_gradient keeps the caller's tape from recording
        # the iterations (see the module docstring for variables read by f).
        flat_const = [tf.stop_gradient(x) for x in flat_diff]

        def run(u_start, theta):
            return alg.run(
                lambda u: residual(u, theta), u_start, abstol=abstol, reltol=reltol, max_iters=max_iters,
                rhs=rhs_for(theta),
            )

        res = _graph_if_eager(run, key, compile)(tf.stop_gradient(u0_c), flat_const)
        forward["res"] = res
        u_star = tf.stop_gradient(res.u)

        def grad(du, variables=None):
            variables = list(variables or [])
            thetas = flat_const + variables

            def fn_theta(u, th):
                return residual(u, th[: len(flat_const)])

            bkey = None if key is None else (key, type(sensealg), repr(adj_linsolve), len(variables))
            if isinstance(sensealg, DiscreteAdjoint):
                grads, ok = _graph_if_eager(lambda u, th, d: _adjoint_vjp(fn_theta, u, th, d, adj_linsolve), bkey,
                                            compile)(u_star, thetas, du)
            else:
                sens, ok = _graph_if_eager(lambda u, th: _forward_sensitivities(fn_theta, u, th, adj_linsolve), bkey,
                                           compile)(u_star, thetas)
                grads = [tf.reshape(tf.einsum("bn,bnp->p", du, s), th.shape) for s, th in zip(sens, thetas)]
            grads = _guard_backward(grads, ok, tf.equal(res.status, 0), throw)
            input_grads = [tf.zeros_like(u0_c)] + grads[: len(flat_const)]
            if variables:
                return input_grads, grads[len(flat_const) :]
            return input_grads

        return tf.identity(res.u), grad

    u_c = implicit_root(_reshape(u0, canon), *diff_leaves)
    res = forward["res"]
    u = _reshape(u_c, dims)
    resid = _reshape(res.resid_norm, dims[:-1] if dims else [])

    du_dp = None
    if isinstance(sensealg, ForwardSensitivity) and diff_leaves:
        du_dp = _du_dp(params, diff_leaves, residual, res.u, adj_linsolve, dims,
                       None if key is None else (key, "du_dp", repr(adj_linsolve)), compile)

    sol = NonlinearSolution(
        u=u, resid_norm=resid, iterations=res.iterations, status=res.status, prob=prob, alg=alg, du_dp=du_dp
    )
    if throw and tf.executing_eagerly():
        raise_if_failed(sol.status, f"solve with {alg!r}")
    return sol


def _du_dp(params, diff_leaves, residual, u_star, linsolve, dims, key=None, compile=True):
    """``du/dp`` as a nest like ``p`` (``[*u.shape, *leaf.shape]`` per differentiable leaf)."""
    flat_const = [tf.stop_gradient(x) for x in diff_leaves]
    sens, _ = _graph_if_eager(lambda u, th: _forward_sensitivities(residual, u, th, linsolve), key, compile)(
        tf.stop_gradient(u_star), flat_const)
    return params.as_nest([tf.reshape(s, dims + x.shape.as_list()) for s, x in zip(sens, flat_const)])


def _adjoint_vjp(fn_theta, u_star, thetas, du, linsolve):
    """``-lam^T df/dtheta`` with ``(df/du)^T lam = du``: one transposed solve, one VJP."""
    op = JacobianOperator(lambda u: fn_theta(u, thetas), u_star)
    lin = linsolve.solve(op, du, transpose=True)
    with tf.GradientTape() as tape:
        tape.watch(thetas)
        r = fn_theta(u_star, thetas)
    grads = tape.gradient(r, thetas, output_gradients=-lin.x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grads, tf.reduce_all(lin.converged)


def _forward_sensitivities(fn_theta, u_star, thetas, linsolve):
    """``S = -(df/du)^{-1} df/dtheta`` for each theta: ``[B, n, size(theta)]`` each."""
    if not thetas:
        return [], tf.constant(True)
    op = JacobianOperator(lambda u: fn_theta(u, thetas), u_star)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(thetas)
        r = fn_theta(u_star, thetas)
    nb, n = r.shape[0], r.shape[1]
    cols = [
        tf.reshape(tape.jacobian(r, th, unconnected_gradients=tf.UnconnectedGradients.ZERO), [nb, n, -1])
        for th in thetas
    ]
    del tape
    sizes = [c.shape[-1] for c in cols]
    lin = linsolve.solve(op, -tf.concat(cols, axis=-1))
    return tf.split(lin.x, sizes, axis=-1), tf.reduce_all(lin.converged)


def _guard_backward(grads, ok, forward_ok, throw=True):
    """Raise (eager) / assert (graph) / NaN (XLA) when the backward solve failed.

    A failed *forward* solve (its status is non-zero: the caller chose
    ``throw=False`` and reads the status) gives NaN gradients without raising,
    and so does everything with ``throw=False``: an optimiser can then treat
    the trial as failed instead of crashing.
    """
    nan = [tf.where(ok & forward_ok, g, tf.constant(np.nan, g.dtype)) for g in grads]
    if not throw:
        return nan
    if tf.executing_eagerly():
        if bool(forward_ok) and not bool(ok):
            raise SolverError(_BACKWARD_MESSAGE)
        return [tf.where(ok & forward_ok, g, tf.constant(np.nan, g.dtype)) for g in grads]
    check = tf.debugging.Assert(ok | ~forward_ok, [_BACKWARD_MESSAGE])  # dropped by XLA, hence the NaN below
    with tf.control_dependencies([check]):
        return [tf.where(ok & forward_ok, g, tf.constant(np.nan, g.dtype)) for g in grads]
