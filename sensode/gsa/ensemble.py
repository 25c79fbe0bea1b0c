"""Ensemble solves: B trajectories, each with its own u0 / p, step size and status.

``stepping="per_sample"`` gives every sample its own step size, step count
and status, so a hard sample neither shrinks the steps of the others nor
fails them. How the samples are vectorised (``vectorize``):

* ``"native"`` (what ``"auto"`` picks for explicit Runge--Kutta methods):
  `sensode.ode.batched.integrate_batched`, one `tf.while_loop` over the whole
  batch whose state holds a time, a step size, the controller's memory,
  counters, a status and a save index per sample (torchode's design). Each
  iteration steps every sample at once with its own ``h``; ``f`` is called for
  the batch through `tf.vectorized_map` over ``(t, u, p)`` (pfor of a
  loop-free function is cheap). Runs in graphs and under XLA.
* ``"pfor"``: one `sensode.solve` per sample, vectorised with
  `tf.vectorized_map`. pfor turns the solver's `tf.while_loop` into one
  batched loop in which every sample keeps its own loop state and drops out
  when it is done; it gathers and scatters the active samples every
  iteration (slow), and cannot run under XLA (its converted loop writes
  TensorLists of changing size).
* ``"map"``: `tf.map_fn`, the samples one after another, each its own
  compiled loop; ``"auto"``'s choice for the methods the native loop does not
  run (stiff methods: pfor takes minutes to convert their Newton and LU loops).

``stepping="shared"`` is the batched solve the core offers: one problem with
state ``[B, *u0.shape]`` whose right-hand side maps ``f`` over the samples;
every sample then takes the steps the batch's error norm allows.

Called eagerly, the ensemble runs as a cached XLA-compiled `tf.function`
(``compile=True``, the default) or a plain one (``compile=False``, and always
for ``vectorize="pfor"``).

Gradients: the per-sample path has its own `tf.custom_gradient`. The backward
pass runs, per sample and vectorised with pfor (``map`` under XLA), the
forward solve again under a tape with the chosen ``sensealg`` and takes its
vector-Jacobian product: pfor cannot differentiate its own converted loop,
but it can vectorise a gradient that was built sample by sample.
`DiscreteAdjoint` differentiates the loop itself, whose gradient pfor cannot
vectorise, and pfor fails on a backward loop that reads a `tf.Variable`;
those backward passes therefore always run sample by sample (`tf.map_fn`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple

import numpy as np
import tensorflow as tf

import sensode as sd
from sensode import tfcompat
from sensode.api import looks_stiff, may_retry_stiff, prepare_ode_solve, warn_solved_again
from sensode.compiled import value_key
from sensode.ode.batched import integrate_batched, resume_batched
from sensode.ode.methods import ExplicitRK

__all__ = ["EnsembleSolution", "solve_ensemble"]
# Internal API of sensode.gsa (not in __all__): STAT_KEYS, batch_inputs (distributed.py), deferred_forward
# (analysis.py's ODEModel).

STAT_KEYS = ("nfe", "steps", "accepted", "rejected")
_STEPPING = ("per_sample", "shared")
_VECTORIZE = ("auto", "native", "pfor", "map")
_COMPACT = (True, False, "auto")


def _in_xla_context() -> bool:
    """True while tracing inside ``tf.function(jit_compile=True)``."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TF internals moved: assume no XLA
        return False
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


@dataclasses.dataclass(frozen=True)
class EnsembleSolution:
    """The result of `solve_ensemble`.

    Attributes:
      t: ``[T]`` save times (shared by all samples).
      u: ``[B, T, *u0.shape]`` states; rows of failed samples are NaN.
      stats: dict of ``[B]`` ``int32`` tensors (``nfe``, ``steps``,
        ``accepted``, ``rejected``), per sample. With ``stepping="shared"``
        every sample carries the batch's counts.
      status: ``[B]`` ``int32`` status per sample (`sensode.Status`).
    """

    t: tf.Tensor
    u: tf.Tensor
    stats: dict
    status: tf.Tensor

    def __tf_flatten__(self):
        return (), (self.t, self.u, self.stats, self.status)

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        t, u, stats, status = components
        return cls(t=t, u=u, stats=stats, status=status)

    @property
    def success(self):
        """``[B]`` boolean tensor: ``status == 0``."""
        return tf.equal(self.status, 0)

    def summary(self) -> str:
        """A short description (eager mode)."""
        status = np.asarray(self.status)
        steps = np.asarray(self.stats["steps"])
        return (
            f"EnsembleSolution: {status.size} samples, u shape {tuple(self.u.shape)}, "
            f"{int(np.sum(status != 0))} failed; steps per sample min {steps.min()}, "
            f"median {int(np.median(steps))}, max {steps.max()}"
        )


def batch_inputs(prob, u0, p):
    """``(u0 [B, ...], p nest of [B, ...] leaves, B)`` with the non-given one broadcast."""
    if not isinstance(prob, sd.ODEProblem):
        raise TypeError(f"`prob` must be a sensode.ODEProblem, got {type(prob).__name__}")
    if u0 is None and p is None:
        raise ValueError("give `u0` ([B, *prob.u0.shape]) or `p` (prob.p's structure, leaves with a leading B axis)")
    dtype = prob.u0.dtype
    sizes = []
    if u0 is not None:
        u0 = tf.convert_to_tensor(u0, dtype)
        if u0.shape.rank != prob.u0.shape.rank + 1 or not u0.shape[1:].is_compatible_with(prob.u0.shape):
            raise ValueError(f"`u0` must have shape [B, *prob.u0.shape] = [B, *{prob.u0.shape.as_list()}], got {u0.shape}")
        sizes.append(u0.shape[0])
    if p is not None:
        if prob.p is None:
            raise ValueError("`p` given but prob.p is None: the problem has no parameters")
        try:
            tf.nest.assert_same_structure(prob.p, p)
        except (ValueError, TypeError) as err:
            raise ValueError(f"`p` must have the structure of prob.p: {err}") from None
        leaves = []
        for ref, leaf in zip(tf.nest.flatten(prob.p), tf.nest.flatten(p)):
            ref = tf.convert_to_tensor(ref)
            leaf = tf.convert_to_tensor(leaf, ref.dtype)
            if leaf.shape.rank != ref.shape.rank + 1 or not leaf.shape[1:].is_compatible_with(ref.shape):
                raise ValueError(f"each leaf of `p` must be [B, *leaf.shape]; expected [B, *{ref.shape.as_list()}], got {leaf.shape}")
            sizes.append(leaf.shape[0])
            leaves.append(leaf)
        p = tf.nest.pack_sequence_as(prob.p, leaves)
    known = {s for s in sizes if s is not None}
    if len(known) > 1:
        raise ValueError(f"`u0` and the leaves of `p` must share the batch size B, got {sorted(known)}")
    # Static B when known; otherwise from the first given input.
    first = u0 if u0 is not None else tf.nest.flatten(p)[0]
    batch = known.pop() if known else tf.shape(first)[0]

    def tile(x):  # [B, *x.shape]; a static shape where known (one op instead of three in eager calls)
        x = tf.convert_to_tensor(x)
        if isinstance(batch, int) and x.shape.is_fully_defined():
            return tf.broadcast_to(x, [batch] + x.shape.as_list())
        return tf.broadcast_to(x, tf.concat([[batch], tf.shape(x)], 0))

    if u0 is None:
        u0 = tile(prob.u0)
    if p is None:
        p = tf.nest.map_structure(tile, prob.p)
    return u0, p


def _nan_where_failed(x, status):
    failed = tf.reshape(tf.not_equal(status, 0), [-1] + [1] * (x.shape.rank - 1))
    return tf.where(failed, tf.constant(np.nan, x.dtype), x)


def _solve_one(prob, u0, p, opts, sensealg):
    sub = sd.ODEProblem(prob.f, u0, prob.tspan, p)
    return sd.solve(sub, opts["alg"], sensealg=sensealg, throw=False, **opts["solve"])


def _vmap(fn, elems, out_sig, vectorize):
    if vectorize == "pfor":
        return tf.vectorized_map(fn, elems, fallback_to_while_loop=False)
    return tf.map_fn(fn, elems, fn_output_signature=out_sig)


def _native_plan(prob, u0b, pb, opts):
    """The checked inputs of the native batched loop, or None where it does not apply.

    One sample's problem goes through `solve`'s own input checks (so the
    default method, the tolerances and the run-time ``saveat`` check are
    those of `sensode.solve`); the native loop runs explicit Runge--Kutta
    methods with scalar tolerances.
    """
    single = sd.ODEProblem(prob.f, u0b[0], prob.tspan, tf.nest.map_structure(lambda x: x[0], pb))
    alg, spec, ts, t0, t1, valid = prepare_ode_solve(single, opts["alg"], controller=None, **opts["solve"])
    o = spec.options
    if not isinstance(alg, ExplicitRK) or o.rtol.shape.rank != 0 or o.atol.shape.rank != 0:
        return None
    return alg, spec, ts, t0, t1, valid, opts["compact"]


def _native_forward(plan, u0b, pb, state=None):
    """``(u [B, T, ...], status [B], stats, pending, state)`` from `integrate_batched`.

    ``pending`` and ``state`` are those of ``compact="defer"`` (else None);
    given a ``state``, `resume_batched` finishes that run.
    """
    alg, spec, ts, t0, t1, valid, compact = plan
    batch = u0b.shape[0] if u0b.shape[0] is not None else tf.shape(u0b)[0]  # static where known
    state_shape = u0b.shape[1:].as_list() if u0b.shape[1:].is_fully_defined() else tf.shape(u0b)[1:]
    f = spec.f

    # pfor converts `f` once, not at each of the method's stages nor again for
    # the compacted batch (the batch dimension is left open): tracing time,
    # not run time.
    signature = None
    if isinstance(state_shape, list):
        relax = lambda x: tf.TensorSpec([None] + x.shape[1:].as_list(), x.dtype)  # noqa: E731
        signature = (tf.TensorSpec([None], u0b.dtype), tf.TensorSpec([None] + state_shape, u0b.dtype),
                     tf.nest.map_structure(relax, pb))

    @tf.function(autograph=False, input_signature=signature)
    def f_batched(t, u, p):
        return tf.vectorized_map(lambda a: f(a[0], a[1], a[2]), (t, u, p))

    def fn(t, y, p):  # t [B, 1], y [[B, N]]: f per sample, vectorised (no loop inside: cheap for pfor)
        rows = tf.shape(y[0])[0]  # B, or fewer once the batch is compacted
        u = tf.reshape(y[0], tf.concat([[rows], state_shape], 0))
        return [tf.reshape(f_batched(t[:, 0], u, p), [rows, -1])]

    if state is None:
        res = integrate_batched(fn, tf.reshape(u0b, [batch, -1]), t0, t1, alg, spec.options, saveat=ts, args=pb,
                                compact=compact)
    else:
        res = resume_batched(fn, state, t0, t1, alg, spec.options, saveat=ts, args=pb)
    u = tf.reshape(res.ys, tf.concat([[batch, tf.shape(ts)[0]], state_shape], 0))
    status = res.status
    if valid is not None:
        status = tf.where(valid, status, tf.constant(sd.Status.INVALID_INPUT, tf.int32))
    return u, status, tuple(res.stats[k] for k in STAT_KEYS), res.pending, res.state


def _per_sample(prob, u0b, pb, opts, sensealg, vectorize, plan=None):
    """Vectorised per-sample solves with a per-sample custom gradient.

    ``plan`` (from `_native_plan`): the forward pass is the native batched
    loop; else it maps `sensode.solve` over the samples with ``vectorize``.
    The backward pass maps with ``vectorize`` (``"pfor"`` or ``"map"``).
    """
    dtype = u0b.dtype
    structure = pb
    p_leaves = tf.nest.flatten(pb)
    if not all(leaf.dtype.is_floating for leaf in p_leaves):
        raise TypeError("`p` of an ensemble must have floating leaves only")
    int_sig = tf.TensorSpec([], tf.int32)
    fwd_sig = (tf.TensorSpec(None, dtype), int_sig, (int_sig,) * 4)
    # Without a tape around it the plain loop is the cheapest forward pass.
    plain = sd.DiscreteAdjoint()

    def forward_one(args):
        u0, leaves = args
        sol = _solve_one(prob, u0, tf.nest.pack_sequence_as(structure, leaves), opts, plain)
        return sol.u, sol.status, tuple(sol.stats[k] for k in STAT_KEYS)

    @tf.custom_gradient
    def run(u0b_, *leaves_b):
        # Inputs cut from the caller's tapes: nothing needs the forward pass recorded, even for a second
        # derivative (`grad` re-solves from the original inputs and reads only `status`), and a persistent
        # or nested tape would make TF build the gradient of its loops while tracing.
        u0s, leaves_s = tf.stop_gradient(u0b_), [tf.stop_gradient(x) for x in leaves_b]
        if plan is not None:
            u, status, stats = _native_forward(plan, u0s, tf.nest.pack_sequence_as(structure, leaves_s))[:3]
        else:
            u, status, stats = _vmap(forward_one, (u0s, leaves_s), fwd_sig, vectorize)
        u = _nan_where_failed(u, status)

        def grad(g_u, *unused, variables=None):
            variables = list(variables or [])
            # pfor cannot vectorise the gradient of a while loop (DiscreteAdjoint), nor a backward loop that reads
            # variables (`f` reading a tf.Variable: "Required handle data not set" for the loop's resource handle).
            bwd_vectorize = "map" if isinstance(sensealg, sd.DiscreteAdjoint) or variables else vectorize

            def vjp_one(args):
                u0, leaves, g = args
                sources = [u0] + list(leaves)
                with tf.GradientTape() as tape:
                    tape.watch(sources)
                    sol = _solve_one(prob, u0, tf.nest.pack_sequence_as(structure, sources[1:]), opts, sensealg)
                grads = tape.gradient(sol.u, sources + variables, output_gradients=g)
                return tuple(tf.zeros_like(x) if gr is None else tf.convert_to_tensor(gr) for gr, x in zip(grads, sources + variables))

            sig = tuple(tf.TensorSpec(None, x.dtype) for x in [u0b_] + list(leaves_b) + variables)
            # A failed sample's NaN rows must not poison the others' cotangents.
            g_u = tf.where(tf.math.is_finite(g_u), g_u, tf.zeros_like(g_u))
            out = [_nan_where_failed(x, status) for x in _vmap(vjp_one, (u0b_, list(leaves_b), g_u), sig, bwd_vectorize)]
            n_in = 1 + len(leaves_b)
            if variables:
                return list(out[:n_in]), [tf.reduce_sum(x, axis=0) for x in out[n_in:]]
            return list(out[:n_in])

        return (u, status) + tuple(stats), grad

    outs = run(u0b, *p_leaves)
    return outs[0], outs[1], dict(zip(STAT_KEYS, outs[2:]))


def _shared(prob, u0b, pb, opts, sensealg):
    """One batched solve: every sample takes the batch's steps."""
    f = prob.f

    def f_batched(t, u, p):
        return tf.vectorized_map(lambda a: f(t, a[0], a[1]), (u, p))

    sol = sd.solve(sd.ODEProblem(f_batched, u0b, prob.tspan, pb), opts["alg"], sensealg=sensealg, throw=False, **opts["solve"])
    batch = tf.shape(u0b)[0]
    u = tf.transpose(sol.u, [1, 0] + list(range(2, sol.u.shape.rank)))  # [T, B, ...] -> [B, T, ...]
    status = tf.fill([batch], sol.status)
    stats = {k: tf.fill([batch], v) for k, v in sol.stats.items()}
    return _nan_where_failed(u, status), status, stats


def _ensemble_graph(prob, u0b, pb, saveat, opts, sensealg, stepping, vectorize):
    if stepping == "shared":
        return _shared(prob, u0b, pb, opts, sensealg)
    xla = _in_xla_context()
    if vectorize == "pfor" and xla:
        raise ValueError(
            "vectorize='pfor' cannot run under XLA (pfor's converted while loop is not XLA-compilable); "
            "use vectorize='auto', 'native' or 'map' inside tf.function(jit_compile=True)"
        )
    plan = None
    if vectorize in ("auto", "native"):
        plan = _native_plan(prob, u0b, pb, opts)
        if plan is None and vectorize == "native":
            raise ValueError(
                "vectorize='native' runs explicit Runge-Kutta methods (Tsit5, DP5, BS3, DP8, ...) with scalar "
                f"rtol / atol; got alg={opts['alg']!r}: use vectorize='auto', 'pfor' or 'map'"
            )
        # The backward pass (and the forward one without a plan). pfor vectorises an implicit method's loops
        # (Newton iterations, LU factorisations) too, but converting them costs minutes of tracing (Robertson,
        # Rodas5, InterpolatingAdjoint gradient of 2 samples, eager: 71 s with pfor, 5.6 s with map_fn).
        vectorize = "map" if xla or plan is None else "pfor"
    if sensealg is None:
        single = sd.ODEProblem(prob.f, u0b[0], prob.tspan, tf.nest.map_structure(lambda x: x[0], pb))
        sensealg = sd.default_sensealg(single)[0]
    return _per_sample(prob, u0b, pb, opts, sensealg, vectorize, plan)


_EAGER_CACHE: dict = {}


class _Staged(NamedTuple):
    """The two programs of an eager ``compact="auto"`` ensemble (`deferred_forward`)."""

    start: tf.types.experimental.GenericFunction  # the whole batch, one loop: (sol, pending, state)
    resume: tf.types.experimental.GenericFunction  # traced only when some batch leaves samples pending


@tf.autograph.experimental.do_not_convert  # plain TF control flow: AutoGraph would only cost tracing time
def solve_ensemble(
    prob,
    u0=None,
    p=None,
    *,
    alg=None,
    saveat=None,
    dt=None,
    rtol=1e-3,
    atol=1e-6,
    max_steps: int = 10000,
    dtmin=None,
    dtmax=None,
    sensealg=None,
    stepping: str = "per_sample",
    vectorize: str = "auto",
    compact: bool | str = "auto",
    throw: bool = True,
    compile: bool = True,
) -> EnsembleSolution:
    """Solve ``B`` copies of ``prob`` with their own ``u0`` and / or ``p``.

    Args:
      prob: the `sensode.ODEProblem` (its ``f`` and ``tspan``; its ``u0`` / ``p``
        are broadcast to the samples when not given).
      u0: ``[B, *prob.u0.shape]`` initial states, or None.
      p: a nest like ``prob.p`` whose leaves have a leading ``B`` axis, or None.
      alg, saveat, dt, rtol, atol, max_steps, dtmin, dtmax: as in
        `sensode.solve` (shared by all samples; ``saveat`` ``[T]``). As
        there, called eagerly with no ``alg``, ``dt`` or ``max_steps``, an
        ensemble on which the default method runs out of steps (or of step
        size) on any sample is solved again with `sensode.Rodas5`, with a
        `sensode.StiffnessWarning`. Stiff methods run per sample with
        ``vectorize="pfor"`` or ``"map"``.
      sensealg: how `tf.GradientTape` differentiates the ensemble with respect
        to ``u0`` and ``p``; None: `sensode.default_sensealg` of one sample.
        Save times and ``tspan`` are not differentiated here.
      stepping: ``"per_sample"`` (each sample its own step size, step count
        and status) or ``"shared"`` (one batched solve: one step size for all,
        the batch's status for every sample).
      vectorize: per-sample only: ``"native"`` (one batched loop with a step
        size per sample; explicit Runge--Kutta methods; works everywhere, XLA
        included), ``"pfor"`` (`tf.vectorized_map` of `sensode.solve`; not
        under XLA), ``"map"`` (`tf.map_fn`, samples one after another, works
        everywhere), ``"auto"`` (``"native"`` where it applies, else ``"map"``:
        pfor can vectorise implicit methods such as ``Rodas5``, but converting
        their Newton and LU loops takes minutes). The backward pass of a
        gradient maps a tape over the samples: ``"map"`` under XLA (so in
        eager calls with ``compile=True``), without the native loop, for
        `DiscreteAdjoint` and when ``f`` reads variables, else ``"pfor"``
        (``"map"`` / ``"pfor"`` given here are used as given, but for those
        last two).
      compact: native loop only. True: once at most ``B / 64`` samples (at
        least 4) still run, finish them in a batch of that size (a few slow
        samples then cost little per step). It is a second loop in the same
        program, compiled with it: False halves the XLA compile time (the
        Sobol benchmark end to end 5.8 -> 3.9 s) at the price of running the
        whole batch until its slowest sample is done. ``"auto"`` (default):
        called eagerly with no gradient tape recording, the whole batch runs
        in one program whose loop keeps going while the samples still
        running are close to done, and a second program, compiled only when
        a batch stops with slow samples far from done, finishes them
        compacted (a homogeneous batch compiles one loop); inside
        `tf.function` or under a tape it means True. The values, statuses
        and per-sample stats do not depend on ``compact``.
      throw: in eager mode raise `sensode.SolverError` if any sample failed.
      compile: called eagerly, run the ensemble as a cached
        `tf.function(jit_compile=True)` (per problem function and options; a
        new batch size or dtype compiles again): the first call compiles
        (seconds), later ones run at compiled speed. False (and
        ``vectorize="pfor"``, which XLA cannot compile) runs it as a plain
        `tf.function` graph: cheaper to build, much slower to run
        (Lotka--Volterra, 64 samples: 77 ms against 2.5 ms per solve; an
        `InterpolatingAdjoint` gradient 0.32 s against 0.08 s). Ignored inside
        `tf.function`.

    Returns:
      `EnsembleSolution` with ``u`` ``[B, T, *u0.shape]``, per-sample ``stats``
      and ``status``; failed samples have NaN rows (and NaN gradients).

    Raises:
      TypeError / ValueError: bad input, naming the argument.
      SolverError: eager mode, ``throw=True`` and some sample failed.

    Eagerly the ensemble runs inside a cached `tf.function` (see ``compile``),
    or two with ``compact="auto"``; a new problem function or new options
    trace it again.
    """
    if stepping not in _STEPPING:
        raise ValueError(f"`stepping` must be one of {list(_STEPPING)}, got {stepping!r}")
    if vectorize not in _VECTORIZE:
        raise ValueError(f"`vectorize` must be one of {list(_VECTORIZE)}, got {vectorize!r}")
    if isinstance(compact, str) and compact not in _COMPACT:
        raise ValueError(f"`compact` must be True, False or 'auto', got {compact!r}")
    if not isinstance(compact, (bool, str)):
        raise TypeError(f"`compact` must be True, False or 'auto', got {compact!r}")
    if not isinstance(compile, (bool, np.bool_)):
        raise TypeError(f"`compile` must be True or False, got {compile!r}")
    if sensealg is not None and not isinstance(
        sensealg, (sd.ForwardSensitivity, sd.DiscreteAdjoint, sd.BacksolveAdjoint, sd.InterpolatingAdjoint, sd.QuadratureAdjoint)
    ):
        raise TypeError(f"`sensealg` must be a sensode ODE sensitivity algorithm, got {sensealg!r}")
    u0b, pb = batch_inputs(prob, u0, p)
    dtype = u0b.dtype
    t0 = tf.cast(prob.tspan[0], dtype)
    t1 = tf.cast(prob.tspan[1], dtype)
    ts = tf.stack([t0, t1]) if saveat is None else tf.cast(saveat, dtype)
    solve_opts = dict(dt=dt, rtol=rtol, atol=atol, max_steps=max_steps, dtmin=dtmin, dtmax=dtmax)
    # "auto" is deferred compaction only for eager code that can inspect a first run's result (the native loop's
    # `pending`) before it runs a second program, and only without a tape: the deferred run has no gradient.
    staged = (compact == "auto" and tf.executing_eagerly() and stepping == "per_sample"
              and vectorize in ("auto", "native") and not tfcompat.gradient_may_be_recorded())
    compact_given = compact
    compact = True if compact == "auto" else compact

    def body(u0b, pb, t0, t1, ts):
        sub = sd.ODEProblem(prob.f, prob.u0, (tf.stop_gradient(t0), tf.stop_gradient(t1)), prob.p)
        o = {"alg": alg, "solve": dict(solve_opts, saveat=tf.stop_gradient(ts)), "compact": compact}
        u, status, stats = _ensemble_graph(sub, u0b, pb, ts, o, sensealg, stepping, vectorize)
        return EnsembleSolution(t=ts, u=u, stats=stats, status=status)

    def staged_body(u0b, pb, t0, t1, ts, state):
        sub = sd.ODEProblem(prob.f, prob.u0, (t0, t1), prob.p)
        return deferred_forward(sub, u0b, pb, state, alg=alg, saveat=ts, sensealg=sensealg, stepping=stepping,
                                vectorize=vectorize, **solve_opts)

    if tf.executing_eagerly():
        jit = bool(compile) and vectorize != "pfor"  # pfor's converted loops are not XLA-compilable
        key = (prob.f, repr(alg), repr(sensealg), stepping, vectorize, "staged" if staged else compact, jit,
               tuple(sorted((k, value_key(v)) for k, v in solve_opts.items())))
        fn = _EAGER_CACHE.get(key)
        if fn is None:
            if len(_EAGER_CACHE) > 32:
                _EAGER_CACHE.clear()
            if staged:
                start = tf.function(lambda *args: staged_body(*args, None), autograph=False, jit_compile=jit)
                fn = _Staged(start=start, resume=tf.function(staged_body, autograph=False, jit_compile=jit))
            else:
                fn = tf.function(body, autograph=False, jit_compile=jit)
            _EAGER_CACHE[key] = fn
        if staged:
            sol, pending, state = fn.start(u0b, pb, t0, t1, ts)
            if int(pending) > 0:  # slow samples far from done: the compacted tail, compiled only now
                sol = fn.resume(u0b, pb, t0, t1, ts, state)[0]
        else:
            sol = fn(u0b, pb, t0, t1, ts)
        status = sol.status.numpy()
        if may_retry_stiff(alg, dt, max_steps) and looks_stiff(status):
            # As `sensode.solve` does: solve the whole ensemble again with the stiff default, once (the first
            # attempt's outputs are dropped, so a tape differentiates only the second).
            stiff = sd.Rodas5()
            warn_solved_again(
                f"solve_ensemble: the default method stopped with status {sorted(set(status[status != 0].tolist()))} "
                f"on {int(np.count_nonzero(status))} of {status.size} samples", stiff)
            return solve_ensemble(prob, u0, p, alg=stiff, saveat=saveat, rtol=rtol, atol=atol, max_steps=max_steps,
                                  dtmin=dtmin, dtmax=dtmax, sensealg=sensealg, stepping=stepping, vectorize=vectorize,
                                  compact=compact_given, throw=throw, compile=compile)
        if throw:
            bad = np.flatnonzero(status)
            if bad.size:
                first = int(bad[0])
                raise sd.SolverError(
                    f"solve_ensemble: {bad.size} of {status.size} samples failed; sample {first}: "
                    f"{sd.Status(int(status[first])).name} "
                    f"(status {int(status[first])}). Pass throw=False to keep the others (failed rows are NaN).",
                    int(status[first]),
                )
        return sol
    return body(u0b, pb, t0, t1, ts)


def deferred_forward(prob, u0, p, state=None, **options):
    """An ensemble's values (no gradient) in stages, for eager drivers (`ODEModel`, ``compact="auto"``).

    ``options``: those of `solve_ensemble` except ``throw`` (``compact`` is
    ignored).
    Returns ``(EnsembleSolution, pending, state)``. Without ``state``, the
    native loop runs with ``compact="defer"`` (one loop to compile): when
    ``pending`` (a ``[]`` int32) is 0 the solution is final; else call again
    with the returned ``state`` (the same ``prob``, ``u0``, ``p`` and
    options), which finishes the samples still running in a compacted batch:
    a second program that is compiled only if some batch needs it. Where the
    native loop does not apply (a stiff method, ``stepping="shared"``), the
    result is `solve_ensemble`'s and ``pending`` is 0.
    """
    def plain():  # compact=True: in a graph "auto" means that anyway, and eagerly it would come back here
        return solve_ensemble(prob, u0, p, throw=False, **dict(options, compact=True)), tf.constant(0, tf.int32), ()

    if options.get("stepping", "per_sample") != "per_sample" or options.get("vectorize", "auto") not in ("auto", "native"):
        return plain()
    u0b, pb = batch_inputs(prob, u0, p)
    dtype = u0b.dtype
    t0 = tf.cast(prob.tspan[0], dtype)
    t1 = tf.cast(prob.tspan[1], dtype)
    saveat = options.get("saveat")
    ts = tf.stack([t0, t1]) if saveat is None else tf.cast(saveat, dtype)
    defaults = inspect.unwrap(solve_ensemble).__kwdefaults__  # solve_ensemble's own defaults, not a copy
    solve_opts = {k: options.get(k, defaults[k]) for k in ("dt", "rtol", "atol", "max_steps", "dtmin", "dtmax")}
    sub = sd.ODEProblem(prob.f, prob.u0, (t0, t1), prob.p)
    plan = _native_plan(sub, u0b, pb, {"alg": options.get("alg"), "solve": dict(solve_opts, saveat=ts), "compact": "defer"})
    if plan is None:
        return plain()
    u, status, stats, pending, state = _native_forward(plan, u0b, pb, state)
    sol = EnsembleSolution(t=ts, u=_nan_where_failed(u, status), stats=dict(zip(STAT_KEYS, stats)), status=status)
    return sol, pending, state
