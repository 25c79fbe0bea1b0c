"""Compare the sensitivity algorithms on one problem and loss: accuracy, time, work, memory.

`compare_sensitivities` computes ``dL/dθ`` for a problem and a loss with every
applicable sensitivity algorithm, a tight-tolerance reference and central
finite differences, and returns a `Comparison`: an aligned text table
(``str``), JSON (``to_json`` / ``from_json``) and a figure of error versus
time (``plot``, needs the optional ``matplotlib``).

Command line (absl flags; see ``docs/cli.md``; the CLI lives in
``sensode/compare.py`` so that ``python -m`` runs a module the package has not
imported)::

  python -m sensode.compare --problem=lotka_volterra
  python -m sensode.compare --problem=lorenz --sensealgs=BacksolveAdjoint,InterpolatingAdjoint
  python -m sensode.compare --problem=brusselator_1d --jit=false --json_out=/tmp/b.json

The loss is ``loss(u) -> scalar`` on the saved states ``u`` of shape
``[T, *u0.shape]`` (``T = len(saveat)``, or 2 for ``saveat=None``: the states
at ``t0`` and ``t1``). It must be written with TensorFlow ops (it is traced in
`tf.function` and differentiated by `tf.GradientTape`).
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from ..params import is_differentiable
from ..params import leaves as p_leaves
from ..sensitivity.backsolve import BacksolveAdjoint
from ..sensitivity.base import SensitivityAlgorithm
from ..sensitivity.discrete import DiscreteAdjoint
from ..sensitivity.forward import ForwardSensitivity
from ..sensitivity.interpolating import InterpolatingAdjoint
from ..sensitivity.quadrature import QuadratureAdjoint
from ..api import adjoint_sensitivities, solve
from ..ode.methods import Tsit5

# Peak memory on CPU: TensorFlow's default CPU allocator keeps no statistics
# for small buffers (`get_memory_info('CPU:0')` reads 0); its BFC allocator
# does, and is chosen by TF_CPU_ALLOCATOR_USE_BFC=true, read once when
# TensorFlow creates its devices (the first op, not `import tensorflow`). The
# library does not set it: changing the allocator of a user's whole process on
# import is not its business (a test suite that did so crashed in a later,
# unrelated XLA test). `python -m sensode.compare` sets it for its own process;
# elsewhere `_memory_measurable` detects the allocator and the column shows "-".
MEMORY_HINT = ("set TF_CPU_ALLOCATOR_USE_BFC=true before TensorFlow starts (e.g. `TF_CPU_ALLOCATOR_USE_BFC=true "
               "python script.py`; `python -m sensode.compare` does this itself)")

from .comparison_result import Comparison, Row

__all__ = ["compare_sensitivities", "Comparison", "Row", "default_sensealgs", "parse_sensealg", "sensealg_name"]

REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12
# ForwardSensitivity carries M = len(u0) + len(theta) tangents of the state; above
# this many state-tangent entries (M * len(u0)) it is not run (memory).
FORWARD_MAX_ENTRIES = 2_000_000
# With a stiff method every stage applies second derivatives of f to all M
# directions; its run time grows with M * len(u0), and so did its compile time
# (plain graph, Rodas5, first call: Robertson's 18 entries 9.9 s, HIRES's 160
# entries 35.9 s before the augmented right-hand side was traced once per
# solve, 5.1 and 15.1 s after, on 2 December 2026), so the default rows
# include it only up to this.
STIFF_FORWARD_MAX_ENTRIES = 50
# Checkpoint count of the checkpointed variants in the default list.
DEFAULT_CHECKPOINTS = 4
# Why the default list has no BacksolveAdjoint row with a stiff method.
BACKSOLVE_NOTE = ("BacksolveAdjoint is not a default row with a stiff method: re-integrating a stiff problem "
                  "backwards is unstable (its gradient is NaN with a failure status); --sensealgs=BacksolveAdjoint "
                  "runs it")


def sensealg_name(sa) -> str:
    """Short display name: the class name, plus ``(checkpoints=k)`` when set."""
    k = getattr(sa, "checkpoints", None)
    return type(sa).__name__ + (f"(checkpoints={k})" if k else "")


def parse_sensealg(text: str) -> SensitivityAlgorithm:
    """``"InterpolatingAdjoint"`` or ``"DiscreteAdjoint(checkpoints=4)"`` -> the algorithm object."""
    classes = {c.__name__: c for c in (ForwardSensitivity, DiscreteAdjoint, BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint)}
    m = re.fullmatch(r"\s*(\w+)\s*(?:\(\s*(?:checkpoints\s*=\s*(\d+))?\s*\))?\s*", text)
    if not m or m.group(1) not in classes:
        raise ValueError(f"unknown sensealg {text!r}; one of {sorted(classes)}, optionally with (checkpoints=k)")
    cls = classes[m.group(1)]
    if m.group(2):
        if cls not in (DiscreteAdjoint, InterpolatingAdjoint):
            raise ValueError(f"{cls.__name__} takes no checkpoints")
        return cls(checkpoints=int(m.group(2)))
    return cls()


def _sizes(prob, wrt):
    n_u = int(prob.u0.shape.num_elements())
    n_p = sum(int(x.shape.num_elements()) for x in _float_leaves(prob.p))
    return n_u, (n_u if "u0" in wrt else 0) + (n_p if "p" in wrt else 0)


def _forward_applicable(n_u, n_theta, alg) -> bool:
    """Forward sensitivities by default: their tangents fit (fewer with a stiff ``alg``)."""
    limit = STIFF_FORWARD_MAX_ENTRIES if getattr(alg, "stiff", False) else FORWARD_MAX_ENTRIES
    return (n_u + n_theta) * n_u <= limit


def default_sensealgs(prob, wrt=("p",), alg=None) -> list:
    """Every algorithm applicable to ``prob``: ForwardSensitivity when its tangents fit
    (``(len(u0) + len(θ)) * len(u0) <= FORWARD_MAX_ENTRIES``, or `STIFF_FORWARD_MAX_ENTRIES`
    with a stiff ``alg``), then the discrete adjoint with and without checkpoints,
    backsolve, interpolating (with and without checkpoints) and quadrature adjoints.

    With a stiff method ForwardSensitivity is in the list for small problems only
    (Robertson, Van der Pol; name it in ``sensealgs`` to include it for HIRES or POLLU):
    its compile time grows with the number of state-tangent entries (HIRES: 72 s).
    BacksolveAdjoint is left out with a stiff method (`BACKSOLVE_NOTE`): integrating a
    stiff problem backwards is unstable and its row could only fail; name it in
    ``sensealgs`` to see it fail.
    """
    n_u, n_theta = _sizes(prob, wrt)
    algs = [ForwardSensitivity()] if _forward_applicable(n_u, n_theta, alg) else []
    backsolve = [] if getattr(alg, "stiff", False) else [BacksolveAdjoint()]
    return algs + [DiscreteAdjoint(), DiscreteAdjoint(checkpoints=DEFAULT_CHECKPOINTS)] + backsolve + [
        InterpolatingAdjoint(), InterpolatingAdjoint(checkpoints=DEFAULT_CHECKPOINTS), QuadratureAdjoint(),
    ]


def _float_leaves(p):
    return [x for x in p_leaves(p) if is_differentiable(x)] if p is not None else []


def _cast_problem(prob, dtype):
    p = None if prob.p is None else tf.nest.map_structure(
        lambda x: tf.cast(x, dtype) if is_differentiable(x) else x, prob.p)
    return prob.remake(u0=tf.cast(prob.u0, dtype), p=p)


def _theta_fn(prob, wrt):
    """``(theta0 [n] float64, build(theta) -> (u0, p))``: flatten the differentiated inputs."""
    leaves = p_leaves(prob.p) if prob.p is not None else []
    float_idx = [i for i, x in enumerate(leaves) if is_differentiable(x)] if "p" in wrt else []
    parts = ([prob.u0] if "u0" in wrt else []) + [leaves[i] for i in float_idx]
    theta0 = tf.concat([tf.reshape(tf.cast(x, tf.float64), [-1]) for x in parts], 0) if parts else tf.zeros([0], tf.float64)
    sizes = [int(x.shape.num_elements()) for x in parts]

    def build(theta, dtype):
        chunks = tf.split(theta, sizes) if sizes else []
        chunks = [tf.reshape(tf.cast(c, dtype), x.shape) for c, x in zip(chunks, parts)]
        u0 = chunks.pop(0) if "u0" in wrt else tf.cast(prob.u0, dtype)
        new = [tf.cast(x, dtype) if is_differentiable(x) else x for x in leaves]
        for i, c in zip(float_idx, chunks):
            new[i] = c
        p = tf.nest.pack_sequence_as(prob.p, new) if prob.p is not None else None
        return u0, p

    return theta0, build


def _loss_and_grad_fn(prob, loss, build, dtype, sensealg, alg, solve_kw, jit_compile):
    @tf.function(jit_compile=jit_compile, autograph=False)
    def fn(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            u0, p = build(theta, dtype)
            sol = solve(prob.remake(u0=u0, p=p), alg, sensealg=sensealg, throw=False, **solve_kw)
            value = tf.cast(loss(sol.u), tf.float64)
        return value, tape.gradient(value, theta), sol.u, sol.stats, sol.status

    return fn


def _reset_memory(device):
    try:
        tf.config.experimental.reset_memory_stats(device)
        return True
    except (ValueError, tf.errors.OpError, AttributeError):
        return False


def _peak_memory(device):
    try:
        return int(tf.config.experimental.get_memory_info(device)["peak"])
    except (ValueError, tf.errors.OpError, AttributeError, KeyError):
        return None


@tf.function(autograph=False)
def _many_small_tensors(x):
    # 1024 tensors of 256 bytes, all alive at the add: 256 KiB in small
    # allocations, like a solver loop's. sin() keeps Grappler from folding
    # or factoring them away.
    return tf.add_n([tf.sin(x + float(i)) for i in range(1024)])


def _memory_measurable(device) -> bool:
    """Whether the allocator's peak counts small allocations inside a `tf.function`, as the measured calls make.

    TensorFlow's default CPU allocator counts large buffers but not small ones
    (a whole Lotka-Volterra gradient reads 0 bytes): probe the way we measure.
    """
    if not _reset_memory(device):
        return False
    with tf.device(device):
        x = tf.ones([32], tf.float64)
        _many_small_tensors(x).numpy()  # trace outside the measurement
        _reset_memory(device)
        _many_small_tensors(x).numpy()
    peak = _peak_memory(device)
    return peak is not None and peak >= 2**17


TIMING_BUDGET_S = 3.0  # timed calls of one row stop once they add up to this (at least one)


def _time_calls(fn, theta, reps):
    """Median of up to ``reps`` calls; slow rows stop at `TIMING_BUDGET_S` (POLLU's adjoints
    take 1.1-1.3 s a call in a plain graph, where 5 calls cost 6 s a row)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn(theta)
        _ = out[0].numpy()
        times.append(time.perf_counter() - t)
        if sum(times) >= TIMING_BUDGET_S:
            break
    return statistics.median(times), out


def _backward_nfe(sa, theta, build, prob, loss, alg, solve_kw, nfe_forward, counted=None):
    """(nfe_backward, note) following the convention of benchmarks/sensitivity_benchmark.py.

    ``counted``: a dict of backward counts by algorithm without checkpoints,
    shared by the rows of one comparison: a checkpointed variant's backward
    solve is its base algorithm's, so it is counted once (on POLLU in a
    plain graph each count traces and runs a program of its own, ~13 s).
    """
    if isinstance(sa, ForwardSensitivity):
        return 0, "0: no backward pass (each forward evaluation also carries len(u0)+len(θ) JVPs)"
    if isinstance(sa, DiscreteAdjoint):
        if sa.checkpoints:
            return 2 * nfe_forward, "2 x nfe_fwd: segments re-solved, then one VJP per evaluation"
        return nfe_forward, "= nfe_fwd: one VJP per forward evaluation (reverse sweep)"
    u0, p = build(theta, prob.u0.dtype)
    base = type(sa)(rtol=sa.rtol, atol=sa.atol, alg=sa.alg, seminorm=sa.seminorm)

    @tf.function(autograph=False)
    def count():
        sol = solve(prob.remake(u0=u0, p=p), alg, sensealg=DiscreteAdjoint(), throw=False, **solve_kw)
        with tf.GradientTape() as tape:
            tape.watch(sol.u)
            value = loss(sol.u)
        g_u = tape.gradient(value, sol.u)
        res = adjoint_sensitivities(sol, sensealg=base, dgdu_discrete=g_u, throw=False,
                                    **{k: v for k, v in solve_kw.items() if k != "saveat"})
        return res.stats["nfe"]

    note = "backward adjoint solve (adjoint_sensitivities stats"
    note += "; plus re-solving the forward segments, about nfe_fwd more)" if getattr(sa, "checkpoints", None) else ")"
    counted = {} if counted is None else counted
    if base not in counted:
        counted[base] = int(count())
    return counted[base], note


def compare_sensitivities(
    prob,
    loss: Callable,
    *,
    sensealgs=None,
    alg=None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    saveat=None,
    reference=None,
    reps: int = 5,
    jit_compile: bool = True,
    max_steps: int = 2000,
    wrt=("p",),
    tolerance: float | None = None,
    finite_differences: bool = True,
    fd_max_params: int = 64,
    count_backward: bool = True,
    progress: Callable[[str], Any] | None = None,
) -> Comparison:
    """Gradient of ``loss(solve(prob).u)`` by every sensitivity algorithm, against a reference.

    Args:
      prob: `ODEProblem` (float32 or float64).
      loss: ``loss(u) -> scalar``; ``u`` is ``[T, *u0.shape]`` (the states at ``saveat``, or at
        ``(t0, t1)`` when ``saveat`` is None) in the problem's dtype. TensorFlow ops only.
      sensealgs: list of algorithms; None: `default_sensealgs(prob, alg=alg)`.
      alg: ODE method (default `Tsit5()`), used for every row and the reference.
      rtol, atol: tolerances of the compared solves.
      saveat: ``[T]`` save times or None.
      reference: None (``ForwardSensitivity()`` in float64 at rtol 1e-10 / atol 1e-12 when it is
        applicable and ``alg`` is not stiff, else ``DiscreteAdjoint()`` there: the exact gradient
        of a solve that tight), a sensitivity algorithm to run at those
        tolerances, or an ``[n]`` array: a known gradient (e.g. a closed form).
      reps: timed calls per algorithm after the first (the median is reported).
      jit_compile: compile with XLA (``tf.function(jit_compile=True)``); False: plain `tf.function`.
      max_steps: step bound of every solve. Under XLA the plain `DiscreteAdjoint` stores this
        many steps: keep it modest.
      wrt: which inputs θ are: ``("p",)`` (every floating leaf of ``p``, flattened in
        `tf.nest` order), ``("u0",)`` or ``("u0", "p")`` (``u0`` first).
      tolerance: a row is ``"ok"`` when its rel_error is at most this; default
        ``max(100 * max(rtol, atol), 1e3 * eps(dtype))``.
      finite_differences: add a central-difference row (float64, reference tolerances, step
        ``1e-4 * max(1, |θ_i|)``) when ``len(θ) <= fd_max_params``.
      count_backward: run `adjoint_sensitivities` once per continuous adjoint for ``nfe_backward``
        (once for an algorithm and its checkpointed variant; not for a row whose gradient failed).
      progress: callable receiving one line of text per stage (e.g. ``print``).

    Returns:
      `Comparison`. Times are wall-clock medians (noisy on shared machines); ``compile_s`` is
      the first call. Peak memory: TensorFlow's allocator statistics
      (``tf.config.experimental.get_memory_info``); on CPU they need the BFC allocator
      (``TF_CPU_ALLOCATOR_USE_BFC=true`` before TensorFlow starts; ``python -m sensode.compare``
      sets it for its process); otherwise ``peak_memory_bytes`` is None and the note says why.
    """
    say = progress or (lambda s: None)
    alg = Tsit5() if alg is None else alg
    dtype = prob.u0.dtype
    kw = dict(rtol=rtol, atol=atol, max_steps=max_steps)
    if saveat is not None:
        kw["saveat"] = tf.cast(saveat, dtype)
    theta0, build = _theta_fn(prob, wrt)
    n = int(theta0.shape[0])
    if n == 0:
        raise ValueError(f"nothing to differentiate: wrt={wrt!r} selects no floating inputs")
    sensealgs = default_sensealgs(prob, wrt, alg) if sensealgs is None else list(sensealgs)
    if tolerance is None:
        tolerance = max(100 * max(rtol, atol), 1e3 * float(np.finfo(dtype.as_numpy_dtype).eps))

    # Reference: float64 at tight tolerances.
    prob64 = _cast_problem(prob, tf.float64)
    ref_kw = dict(kw, rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL, max_steps=max(20 * max_steps, 100_000))
    if saveat is not None:
        ref_kw["saveat"] = tf.cast(saveat, tf.float64)
    loss64 = lambda u: loss(tf.cast(u, dtype))  # noqa: E731  (the loss sees the problem's dtype)
    n_u, _ = _sizes(prob, wrt)
    if reference is None or isinstance(reference, SensitivityAlgorithm):
        ref_alg = reference or (ForwardSensitivity() if _forward_applicable(n_u, n, alg) else DiscreteAdjoint())
        say(f"reference: {sensealg_name(ref_alg)}, float64, rtol={REFERENCE_RTOL:g}, atol={REFERENCE_ATOL:g}")
        fn = _loss_and_grad_fn(prob64, loss64, build, tf.float64, ref_alg, alg, ref_kw, False)
        _, g_ref, _, _, st = fn(theta0)
        if int(st) != 0:
            raise RuntimeError(f"the reference solve failed (status {int(st)}); raise max_steps or check the problem")
        g_ref = g_ref.numpy()
        ref_text = f"{sensealg_name(ref_alg)} in float64 at rtol={REFERENCE_RTOL:g}, atol={REFERENCE_ATOL:g}"
    else:
        g_ref = np.asarray(reference, np.float64).reshape(-1)
        if g_ref.shape != (n,):
            raise ValueError(f"`reference` must have {n} entries (len(θ)), got {g_ref.shape}")
        ref_text = "user-supplied gradient"
    ref_norm = float(np.linalg.norm(g_ref)) or 1.0

    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    memory_ok = _memory_measurable(device)
    rows, counted = [], {}  # counted: backward nfe by base algorithm (`_backward_nfe`)
    for i, sa in enumerate(sensealgs):
        name = sensealg_name(sa)
        say(f"[{i + 1}/{len(sensealgs)}] {name}: compiling{' (XLA)' if jit_compile else ''} ...")
        row = Row(sensealg=name)
        try:
            fn = _loss_and_grad_fn(prob, loss, build, dtype, sa, alg, kw, jit_compile)
            t = time.perf_counter()
            value, grad, _, stats, status = fn(theta0)
            row.compile_s = time.perf_counter() - t
            row.time_s, (value, grad, _, stats, status) = _time_calls(fn, theta0, max(1, reps))
            if memory_ok:
                _reset_memory(device)
                fn(theta0)[0].numpy()
                row.peak_memory_bytes = _peak_memory(device)
            row.nfe_forward = int(stats["nfe"])
            g = grad.numpy()
            row.gradient = g.tolist()
            row.rel_error = float(np.linalg.norm(g - g_ref) / ref_norm)
            if int(status) != 0:
                row.status = f"failed: forward solve status {int(status)}"
            elif not np.all(np.isfinite(g)):
                row.status = "failed: non-finite gradient"
            elif row.rel_error > tolerance:
                row.status = "inaccurate"
            if count_backward and row.status.startswith("failed"):
                # A count of a failed backward pass compares nothing, and it is a program of its own.
                row.nfe_note = "not counted: the gradient failed"
            elif count_backward:
                row.nfe_backward, row.nfe_note = _backward_nfe(sa, theta0, build, prob, loss, alg, kw, row.nfe_forward,
                                                               counted)
        except Exception as e:  # noqa: BLE001 -- one failing algorithm must not end the comparison
            row.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        say(f"    rel_error={row.rel_error if row.rel_error is None else f'{row.rel_error:.2e}'} "
            f"time={row.time_s if row.time_s is None else f'{1e3 * row.time_s:.2f} ms'} status={row.status}")
        rows.append(row)

    if finite_differences:
        rows.append(_fd_row(prob64, loss64, build, alg, ref_kw, theta0, g_ref, ref_norm, tolerance, fd_max_params, say))
    memory_note = (f"peak memory: tf.config.experimental.get_memory_info('{device}')['peak'] during one call"
                   if memory_ok else f"peak memory: not measured (the allocator of {device} keeps no statistics; "
                   f"{MEMORY_HINT})")
    desc = (f"{prob!r}, {type(alg).__name__}, rtol={rtol:g}, atol={atol:g}, len(θ)={n} ({'+'.join(wrt)}), "
            f"{'XLA' if jit_compile else 'tf.function'}, median of {max(1, reps)} calls "
            f"(fewer where they pass {TIMING_BUDGET_S:g} s)")
    return Comparison(rows=rows, reference=ref_text, reference_gradient=[float(x) for x in g_ref],
                      tolerance=float(tolerance), problem=desc, memory_note=memory_note)


def _fd_row(prob64, loss64, build, alg, ref_kw, theta0, g_ref, ref_norm, tolerance, fd_max_params, say):
    n = int(theta0.shape[0])
    row = Row(sensealg="finite differences", nfe_backward=0, nfe_note="0: 2 x len(θ) forward solves, no backward pass")
    if n > fd_max_params:
        row.status = f"skipped: len(θ) = {n} > fd_max_params = {fd_max_params}"
        return row
    say(f"finite differences: {2 * n} float64 solves at the reference tolerances ...")

    # Always under XLA: a forward solve compiles in seconds, and 2 len(θ) solves at
    # tight tolerances in a plain graph are slow with a stiff method (HIRES: 35 s
    # against 0.7 s, 3 December 2026; the rows' `jit_compile` is about gradients).
    @tf.function(autograph=False, jit_compile=True)
    def value(theta):
        u0, p = build(theta, tf.float64)
        sol = solve(prob64.remake(u0=u0, p=p), alg, sensealg=DiscreteAdjoint(), throw=False, **ref_kw)
        return tf.cast(loss64(sol.u), tf.float64), sol.stats["nfe"], sol.status

    th = theta0.numpy()
    g = np.zeros(n)
    nfe, bad = 0, False
    value(theta0)  # trace once; the reported time is that of the 2 n solves
    t = time.perf_counter()
    for i in range(n):
        # Relative to the parameter: rate constants span 1e-4 .. 1e11 (POLLU), and a step
        # of 1e-4 on k = 8.6e-4 (the absolute floor this had) made the row inaccurate.
        h = 1e-4 * (abs(th[i]) or 1.0)
        vals = []
        for s in (1.0, -1.0):
            x = th.copy()
            x[i] += s * h
            v, k, st = value(tf.constant(x))
            vals.append(float(v))
            nfe += int(k)
            bad |= int(st) != 0
        g[i] = (vals[0] - vals[1]) / (2 * h)
    row.time_s = time.perf_counter() - t
    row.nfe_forward = nfe
    row.gradient = g.tolist()
    row.rel_error = float(np.linalg.norm(g - g_ref) / ref_norm)
    row.status = "failed: a solve failed" if bad else ("inaccurate" if row.rel_error > tolerance else "ok")
    return row
