"""Scaling benchmark: costs that follow the work done, not static bounds (issue 12).

Prints JSON lines; nothing here asserts a time. Every figure is a ratio of two
timings measured in the same run (medians of ``--reps`` calls after a warm-up),
so that a loaded machine moves both sides alike. The machine's load average is
printed with the results.

Cases:

* ``max_steps``: `DiscreteAdjoint` gradient of the neural ODE
  (`sensode.models.neural_ode_mlp`, batch 512, t in [0, 1], rtol 1e-3) and of
  Lotka--Volterra, with a tight ``max_steps`` and with 20x that; and the
  `DiscreteAdjoint`, `InterpolatingAdjoint` and `QuadratureAdjoint` gradients
  of a 300-state ``u' = tanh(A u)`` (23 DP5 steps) at ``max_steps`` 100 and
  10,000. Target: the loose bound costs at most 1.5x the tight one.
* ``span_memory``: `DiscreteAdjoint` peak memory (TF's CPU allocator, which
  needs ``TF_CPU_ALLOCATOR_USE_BFC=true``, set here before TensorFlow loads)
  of Lotka--Volterra with t1 = 10 and t1 = 1000 (``max_steps`` 100x the span).
  Target: at most 4x.
* ``steps``: `InterpolatingAdjoint` and `QuadratureAdjoint` gradients of
  Lotka--Volterra (101 saves) on t1 = 100 and t1 = 1000 (10x the steps).
  Target: at most 13x the time.
* ``eager``: second eager calls of `sensode.solve`,
  `forward_sensitivities`, `adjoint_sensitivities` and of a gradient through
  `solve` under `tf.GradientTape` (compiled and cached internally) against an
  explicit ``tf.function(jit_compile=True)`` of the same call, interleaved
  (medians and 25th percentiles). Target: at most 3x. A gradient from eager
  code runs two programs (TensorFlow splits a function into a forward pass
  that keeps intermediates and a backward pass) where the explicit function
  compiles one.

Usage::

  python benchmarks/scaling_benchmark.py             # all cases, --reps=5
  python benchmarks/scaling_benchmark.py --cases=eager,max_steps
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # get_memory_info on CPU

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import sensode as sd  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["max_steps", "span_memory", "steps", "eager"], "Cases to run.")
flags.DEFINE_integer("reps", 5, "Timed calls per measurement (median).")


def _median_ms(fn, *args, reps):
    fn(*args)  # warm-up: tracing and compilation
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn(*args)
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _grad_fn(prob, sensealg, saveat, max_steps, rtol, atol, loss="final"):
    @tf.function(jit_compile=True)
    def grad(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = sd.solve(prob.remake(p=p), sd.DP5(), saveat=saveat, rtol=rtol, atol=atol, max_steps=max_steps,
                           sensealg=sensealg)
            u = sol.u[-1] if loss == "final" else sol.u
            value = tf.reduce_mean(u ** 2)
        return tape.gradient(value, p), sol.stats["steps"], sol.status

    return grad


def _emit(**row):
    row["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)


def case_max_steps(reps):
    nn = sd.models.neural_ode_mlp()
    lv = sd.models.lotka_volterra()
    ts_lv = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 101)
    # 300 states, u' = tanh(A u): where a buffer of max_steps dense-output rows (not the
    # steps) shows (InterpolatingAdjoint 20 -> 184 ms at 100 -> 10,000 before its chunked record).
    rng = np.random.default_rng(0)
    a300 = tf.constant(-np.eye(300) + 0.3 * rng.normal(size=(300, 300)) / np.sqrt(300))
    wide = sd.ODEProblem(lambda t, u, p: tf.tanh(tf.linalg.matvec(p, u)), tf.ones([300], tf.float64), (0.0, 5.0), a300)
    cases = [("neural_ode_mlp", nn, None, 16, 1e-3, 1e-6, sd.DiscreteAdjoint()),
             ("lotka_volterra", lv, ts_lv, 200, 1e-6, 1e-8, sd.DiscreteAdjoint())]
    cases += [("tanh_linear300", wide, None, 100, 1e-6, 1e-8, alg)
              for alg in (sd.DiscreteAdjoint(), sd.InterpolatingAdjoint(), sd.QuadratureAdjoint())]
    for name, prob, saveat, tight, rtol, atol, sensealg in cases:
        out = {}
        loose = 20 * tight if name != "tanh_linear300" else 100 * tight
        for label, ms in (("tight", tight), ("loose", loose)):
            fn = _grad_fn(prob, sensealg, saveat, ms, rtol, atol, loss="all")
            _, steps, status = fn(prob.p)
            out[label] = _median_ms(fn, prob.p, reps=reps)
            out[label + "_steps"] = int(steps)
            assert int(status) == 0, (name, label, int(status))
        _emit(case="max_steps", problem=name, alg=type(sensealg).__name__, tight_max_steps=tight,
              loose_max_steps=loose, tight_ms=out["tight"], loose_ms=out["loose"],
              ratio=round(out["loose"] / out["tight"], 3), steps=out["tight_steps"], target="<= 1.5")


def case_span_memory(reps):
    del reps
    peaks = {}
    for t1 in (10.0, 1000.0):
        prob = sd.models.lotka_volterra(tspan=(0.0, t1))
        fn = _grad_fn(prob, sd.DiscreteAdjoint(), None, int(100 * t1), 1e-6, 1e-8)
        fn(prob.p)
        tf.config.experimental.reset_memory_stats("CPU:0")
        _, steps, _ = fn(prob.p)
        peaks[t1] = (tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20, int(steps))
    _emit(case="span_memory", problem="lotka_volterra", alg="DiscreteAdjoint", peak_mb_t10=round(peaks[10.0][0], 3),
          peak_mb_t1000=round(peaks[1000.0][0], 3), steps_t10=peaks[10.0][1], steps_t1000=peaks[1000.0][1],
          ratio=round(peaks[1000.0][0] / max(peaks[10.0][0], 1e-9), 3), target="<= 4")


def case_steps(reps):
    for alg in (sd.InterpolatingAdjoint(), sd.QuadratureAdjoint(), sd.BacksolveAdjoint()):
        out = {}
        for t1 in (100.0, 1000.0):
            prob = sd.models.lotka_volterra(tspan=(0.0, t1))
            ts = tf.linspace(tf.constant(0.0, tf.float64), t1, 101)
            fn = _grad_fn(prob, alg, ts, int(40 * t1), 1e-6, 1e-8, loss="all")
            _, steps, status = fn(prob.p)
            out[t1] = (_median_ms(fn, prob.p, reps=reps), int(steps), int(status))
        _emit(case="steps", problem="lotka_volterra", alg=type(alg).__name__, ms_t100=round(out[100.0][0], 3),
              ms_t1000=round(out[1000.0][0], 3), steps_t100=out[100.0][1], steps_t1000=out[1000.0][1],
              time_ratio=round(out[1000.0][0] / out[100.0][0], 3),
              step_ratio=round(out[1000.0][1] / out[100.0][1], 3), target="time_ratio <= 13")


def _interleaved_ms(fns, *args, reps):
    """Per function, called in turn ``reps`` times after a warm-up: ``(median, p25, CPU median)`` in ms.

    Interleaving shares a loaded machine's slow moments between the sides.
    A busy 2-core machine still adds multi-millisecond scheduling stalls to a
    fraction of sub-millisecond calls, so the 25th percentile of wall time and
    the median of the process's CPU time (all its threads; waiting for a core
    does not count) are reported as well.
    """
    for fn in fns:
        fn(*args)
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t, c = time.perf_counter(), time.process_time()
            out = fn(*args)
            tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    return [(float(np.median(w)) * 1e3, float(np.percentile(w, 25)) * 1e3, float(np.median(c)) * 1e3)
            for w, c in zip(wall, cpu)]


def case_eager(reps):
    """Second eager calls (the cached compiled function) against an explicit XLA function of the same call."""
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 101)
    kw = dict(saveat=ts, rtol=1e-6, atol=1e-8)
    sol = sd.solve(prob, sd.DP5(), **kw)
    g = tf.ones_like(sol.u)

    def gradient(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            u = sd.solve(prob.remake(p=p), sd.DP5(), sensealg=sd.InterpolatingAdjoint(), **kw).u
            loss = tf.reduce_sum(u ** 2)
        return tape.gradient(loss, p)

    calls = {  # each returns everything the entry point computes, so that XLA prunes nothing on one side only
        "solve": lambda p: sd.solve(prob.remake(p=p), sd.DP5(), **kw),
        "forward_sensitivities": lambda p: sd.forward_sensitivities(prob.remake(p=p), sd.DP5(), **kw),
        "adjoint_sensitivities": lambda p: sd.adjoint_sensitivities(sol, sd.DP5(), dgdu_discrete=g + p[0],
                                                                    rtol=1e-6, atol=1e-8),
        "solve_gradient": gradient,
    }
    for name, eager in calls.items():
        explicit = tf.function(eager, jit_compile=True)
        t = time.perf_counter()
        eager(prob.p)
        first = time.perf_counter() - t
        (e_ms, e_p25, e_cpu), (x_ms, x_p25, x_cpu) = _interleaved_ms([eager, explicit], prob.p, reps=max(reps, 30))
        _emit(case="eager", call=name, problem="lotka_volterra", saves=101, first_call_s=round(first, 2),
              eager_ms=round(e_ms, 3), xla_ms=round(x_ms, 3), ratio=round(e_ms / x_ms, 3),
              eager_p25_ms=round(e_p25, 3), xla_p25_ms=round(x_p25, 3), ratio_p25=round(e_p25 / x_p25, 3),
              eager_cpu_ms=round(e_cpu, 3), xla_cpu_ms=round(x_cpu, 3), ratio_cpu=round(e_cpu / x_cpu, 3),
              target="<= 3")


def main(argv):
    del argv
    _emit(benchmark="scaling", sensode=sd.__version__, tensorflow=tf.__version__, cpus=os.cpu_count())
    for name in FLAGS.cases:
        globals()["case_" + name](FLAGS.reps)


if __name__ == "__main__":
    app.run(main)
