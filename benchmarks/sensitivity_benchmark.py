"""Gradient benchmark: every sensode sensitivity algorithm against TFP's gradient.

Prints one JSON line per (case, algorithm), then a JSON line of ratios to
TFP-XLA and JSON lines of the memory flatness check. This is a script, not a
test: nothing here asserts a time.

Cases (ODE method `sensode.DP5()`, the tableau of TFP's DormandPrince):

* ``lotka_volterra``: `sensode.models.lotka_volterra()`, 4 parameters, t in
  [0, 10], 101 save points, rtol 1e-6, atol 1e-8, float64, loss the sum of
  squares of all saved states, ``max_steps=2000``. Reference: SciPy DOP853 on
  the forward sensitivity equations at rtol 1e-12 / atol 1e-14.
* ``neural_ode_mlp``: `sensode.models.neural_ode_mlp()` (2 -> 64 -> 64 -> 2,
  tanh, batch 512, 4,482 weights), t in [0, 1], 10 save points, float32,
  rtol 1e-5, atol 1e-6, loss the mean of squares at the final time,
  ``max_steps=200``. Reference: `DiscreteAdjoint()` on the same weights in
  float64 at rtol 1e-10 / atol 1e-12 (no closed form exists).
* ``linear100``: `sensode.models.linear(n=100)`, ``A`` the parameter (10,000
  entries), t in [0, 1], saved at t = 1 only, rtol 1e-6, atol 1e-8, float64,
  loss ``|u(1)|^2``, ``max_steps=500``. Reference: ``dL/dA =
  expm_frechet(A^T, 2 u(1) u0^T)`` (exact).

Algorithms: ``ForwardSensitivity()`` (Lotka--Volterra only: its tangent seed
is ``[M, *p.shape]`` with ``M = len(u0) + len(p)`` directions, 4.5k x 512 x 2
for the neural ODE and 10,100 x 100 x 100 float64 = 8 GB for linear-100),
``DiscreteAdjoint()``, ``DiscreteAdjoint(checkpoints=k)``,
``BacksolveAdjoint()``, ``InterpolatingAdjoint()``,
``InterpolatingAdjoint(checkpoints=k)``, ``QuadratureAdjoint()``; and
``tfp.math.ode.DormandPrince`` (its default adjoint gradient, parameters
passed as ``constants``). Everything runs in ``tf.function(jit_compile=True)``.

Fields:

* ``grad_ms``: median wall time of one gradient call (loss and ``dL/dp``)
  over ``--reps`` calls after the first; ``first_call_s`` includes tracing and
  XLA compilation; ``forward_ms`` the median of a forward-only solve of the
  same library under XLA (sensode: the plain loop, ``DiscreteAdjoint()``),
  measured in the same run; ``grad_over_forward`` their ratio.
* ``nfe_forward``: the forward solve's right-hand-side evaluations
  (``sol.stats['nfe']``; for ForwardSensitivity each evaluation also carries
  the ``M`` tangent JVPs). ``nfe_backward``: for the continuous adjoints the
  backward solve's statistics from `sensode.adjoint_sensitivities` (same
  options; QuadratureAdjoint includes its quadrature nodes); for
  ``DiscreteAdjoint()`` the reverse sweep makes one VJP per forward
  evaluation (= ``nfe_forward``); with checkpoints the segments are re-solved
  first (2 x ``nfe_forward``: re-solve plus VJPs); ForwardSensitivity has no
  backward pass; for TFP, evaluations counted with a counter variable in a
  `tf.function` without XLA (TFP's adjoint restarts at every save time).
  ``nfe_backward_source`` says which.
* ``peak_mem_mb``: the peak of TensorFlow's CPU allocator during one
  gradient call after warm-up (``tf.config.experimental.reset_memory_stats``
  then ``get_memory_info('CPU:0')['peak']``). This works on CPU in TF 2.21 and
  counts XLA's buffers (InterpolatingAdjoint's dense-output record of
  ``max_steps`` entries shows up at its expected size). Process RSS is no use
  here: after warm-up the allocator reuses memory it already holds.
* ``rel_err``: ``|g - g_ref| / |g_ref|`` over all of ``dL/dp``.

The memory flatness check solves a batch of 64 Lotka--Volterra systems on
t in [0, 10] and [0, 100] (about ten times the steps), ``max_steps`` sized to
1.25x the steps each needs (as a user would size it), and reports each
algorithm's peak memory for both and their ratio.

Usage::

  python benchmarks/sensitivity_benchmark.py             # full run, --reps=10
  python benchmarks/sensitivity_benchmark.py --quick     # smoke run (Lotka-Volterra)
  python benchmarks/sensitivity_benchmark.py --cases=lotka_volterra --reps=50
"""

from __future__ import annotations

import json
import math
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import sensode  # noqa: E402
from timing import measure  # noqa: E402  (benchmarks/timing.py)
from sensode import models  # noqa: E402

CASES = ("lotka_volterra", "neural_ode_mlp", "linear100")
ALGS = (
    "ForwardSensitivity",
    "DiscreteAdjoint",
    "DiscreteAdjoint(checkpoints=k)",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "InterpolatingAdjoint(checkpoints=k)",
    "QuadratureAdjoint",
)
CONTINUOUS = ("BacksolveAdjoint", "InterpolatingAdjoint", "InterpolatingAdjoint(checkpoints=k)", "QuadratureAdjoint")

_REPS = flags.DEFINE_integer("reps", 10, "Timed repetitions after the first call (median reported).", lower_bound=1)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 3 repetitions, Lotka-Volterra only (unless --cases is given), no checkpointed algorithms, no flatness check.")
_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run, any of {', '.join(CASES)}.")
_CHECKPOINTS = flags.DEFINE_integer("checkpoints", 4, "k of the checkpointed algorithms (compile time grows with k).", lower_bound=1)
_FLATNESS = flags.DEFINE_bool("flatness", True, "Run the memory flatness check (skipped by --quick).")


def make_sensealg(name: str):
    k = _CHECKPOINTS.value
    return {
        "ForwardSensitivity": sensode.ForwardSensitivity(),
        "DiscreteAdjoint": sensode.DiscreteAdjoint(),
        "DiscreteAdjoint(checkpoints=k)": sensode.DiscreteAdjoint(checkpoints=k),
        "BacksolveAdjoint": sensode.BacksolveAdjoint(),
        "InterpolatingAdjoint": sensode.InterpolatingAdjoint(),
        "InterpolatingAdjoint(checkpoints=k)": sensode.InterpolatingAdjoint(checkpoints=k),
        "QuadratureAdjoint": sensode.QuadratureAdjoint(),
    }[name]


# --- the three cases ----------------------------------------------------------------


class Case:
    """Problem, save times, tolerances, loss, ``max_steps`` and the reference ``dL/dp``."""

    def __init__(self, name: str):
        self.name = name
        if name == "lotka_volterra":
            self.prob = models.lotka_volterra(tspan=(0.0, 10.0), dtype=tf.float64)
            self.ts_np = np.linspace(0.0, 10.0, 101)
            self.rtol, self.atol, self.max_steps = 1e-6, 1e-8, 2000
            self.loss = lambda u: tf.reduce_sum(u**2)
            self.skip = {}
            self.reference = self._lv_reference()
            self.reference_kind = "SciPy DOP853 forward sensitivities, rtol 1e-12 atol 1e-14"
        elif name == "neural_ode_mlp":
            self.prob = models.neural_ode_mlp(tspan=(0.0, 1.0), dtype=tf.float32)
            self.ts_np = np.linspace(0.0, 1.0, 10)
            self.rtol, self.atol, self.max_steps = 1e-5, 1e-6, 200
            self.loss = lambda u: tf.reduce_mean(u[-1] ** 2)
            self.skip = {"ForwardSensitivity": "tangent batch [M, 512, 2] with M = 5,506 directions"}
            self.reference = self._mlp_reference()
            self.reference_kind = "sensode DiscreteAdjoint in float64, rtol 1e-10 atol 1e-12 (no closed form)"
        elif name == "linear100":
            self.prob = models.linear(n=100, tspan=(0.0, 1.0), dtype=tf.float64)
            self.ts_np = np.array([1.0])
            self.rtol, self.atol, self.max_steps = 1e-6, 1e-8, 500
            self.loss = lambda u: tf.reduce_sum(u[-1] ** 2)
            self.skip = {"ForwardSensitivity": "tangent seed [10100, 100, 100] float64 = 8 GB"}
            a = self.prob.p.numpy()
            u0 = self.prob.u0.numpy()
            u1 = scipy.linalg.expm(a) @ u0
            self.reference = [scipy.linalg.expm_frechet(a.T, 2.0 * np.outer(u1, u0), compute_expm=False)]
            self.reference_kind = "exact: expm_frechet(A^T, 2 u(1) u0^T)"
        else:
            raise app.UsageError(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        self.dtype = self.prob.u0.dtype
        self.ts = tf.constant(self.ts_np, self.dtype)
        self.n_params = sum(int(np.size(x)) for x in tf.nest.flatten(self.prob.p))

    def _lv_reference(self):
        a, b, c, d = self.prob.p.numpy().tolist()

        def rhs(t, y):
            x, z = y[:2]
            s = y[2:].reshape(2, 4)  # du/dp
            jac = np.array([[a - b * z, -b * x], [d * z, -c + d * x]])
            fp = np.array([[x, -x * z, 0.0, 0.0], [0.0, 0.0, -z, x * z]])
            return np.concatenate([[a * x - b * x * z, -c * z + d * x * z], (jac @ s + fp).ravel()])

        y0 = np.concatenate([self.prob.u0.numpy(), np.zeros(8)])
        ref = solve_ivp(rhs, (0.0, 10.0), y0, method="DOP853", t_eval=self.ts_np, rtol=1e-12, atol=1e-14)
        u = ref.y[:2].T  # [T, 2]
        s = ref.y[2:].T.reshape(-1, 2, 4)
        return [np.einsum("ti,tij->j", 2.0 * u, s)]

    def _mlp_reference(self):
        prob64 = models.neural_ode_mlp(tspan=(0.0, 1.0), dtype=tf.float64)
        ts = tf.constant(self.ts_np, tf.float64)

        @tf.function(jit_compile=True)
        def grad(u0, p):
            with tf.GradientTape() as tape:
                tape.watch(p)
                sol = sensode.solve(
                    sensode.ODEProblem(prob64.f, u0, prob64.tspan, p), sensode.DP5(), saveat=ts, rtol=1e-10,
                    atol=1e-12, max_steps=2000, sensealg=sensode.DiscreteAdjoint(), throw=False,
                )
                loss = tf.reduce_mean(sol.u[-1] ** 2)
            return tape.gradient(loss, p)

        return [x.numpy() for x in tf.nest.flatten(grad(prob64.u0, prob64.p))]

    def rel_err(self, grads) -> float:
        g = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in tf.nest.flatten(grads)])
        r = np.concatenate([np.ravel(x) for x in self.reference])
        return float(np.linalg.norm(g - r) / np.linalg.norm(r))


# --- runners: zero-argument callables returning NumPy / Python values ---------------


def sensode_solve(prob, ts, case, sensealg, u0, p, max_steps=None):
    return sensode.solve(
        sensode.ODEProblem(prob.f, u0, prob.tspan, p), sensode.DP5(), saveat=ts, rtol=case.rtol, atol=case.atol,
        max_steps=case.max_steps if max_steps is None else max_steps, sensealg=sensealg, throw=False,
    )


def sensode_forward(case):
    @tf.function(jit_compile=True)
    def run(u0, p):
        sol = sensode_solve(case.prob, case.ts, case, sensode.DiscreteAdjoint(), u0, p)
        return sol.u, sol.stats["nfe"]

    return lambda: run(case.prob.u0, case.prob.p)[1].numpy()


def sensode_gradient(case, sensealg, prob=None, ts=None, max_steps=None):
    prob = case.prob if prob is None else prob
    ts = case.ts if ts is None else ts

    @tf.function(jit_compile=True)
    def run(u0, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = sensode_solve(prob, ts, case, sensealg, u0, p, max_steps)
            loss = case.loss(sol.u)
        return tape.gradient(loss, p), sol.stats["nfe"], sol.status

    def call():
        g, nfe, status = run(prob.u0, prob.p)
        return tf.nest.map_structure(lambda x: x.numpy(), g), int(nfe), int(status) == 0

    return call, run


def tape_free_dldu(case, u):
    with tf.GradientTape() as tape:
        tape.watch(u)
        loss = case.loss(u)
    return tape.gradient(loss, u)


def sensode_backward_nfe(case, sensealg):
    """Backward-solve evaluations of a continuous adjoint, from `adjoint_sensitivities`."""

    @tf.function(jit_compile=True)
    def run(u0, p):
        sol = sensode_solve(case.prob, case.ts, case, sensode.DiscreteAdjoint(), u0, p)
        res = sensode.adjoint_sensitivities(
            sol, sensealg=sensealg, dgdu_discrete=tape_free_dldu(case, sol.u), rtol=case.rtol, atol=case.atol,
            max_steps=case.max_steps, throw=False,
        )
        return res.stats["nfe"]

    return int(run(case.prob.u0, case.prob.p))


def tfp_solve(case, u0, p, counter=None):
    solver = tfp.math.ode.DormandPrince(rtol=case.rtol, atol=case.atol)
    f = case.prob.f

    def ode_fn(t, y, p):
        if counter is not None:
            counter.assign_add(1)
        return f(t, y, p)

    return solver.solve(ode_fn, initial_time=tf.constant(0.0, case.dtype), initial_state=u0,
                        solution_times=case.ts, constants={"p": p})


def tfp_forward(case):
    @tf.function(jit_compile=True)
    def run(u0, p):
        res = tfp_solve(case, u0, p)
        return res.states, res.diagnostics.num_ode_fn_evaluations

    return lambda: run(case.prob.u0, case.prob.p)[1].numpy()


def tfp_gradient(case):
    @tf.function(jit_compile=True)
    def run(u0, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            res = tfp_solve(case, u0, p)
            loss = case.loss(res.states)
        return tape.gradient(loss, p), res.diagnostics.num_ode_fn_evaluations, res.diagnostics.status

    def call():
        g, nfe, status = run(case.prob.u0, case.prob.p)
        return tf.nest.map_structure(lambda x: x.numpy(), g), int(nfe), int(status) == 0

    return call


def tfp_total_nfe(case):
    """Every ode_fn call of TFP's forward solve and gradient (no XLA: a counter variable)."""
    counter = tf.Variable(0, dtype=tf.int64, trainable=False)

    @tf.function
    def run(u0, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            res = tfp_solve(case, u0, p, counter)
            loss = case.loss(res.states)
        return tape.gradient(loss, p)

    run(case.prob.u0, case.prob.p)
    return int(counter.numpy())


# --- measurement ----------------------------------------------------------------------


def memory(call):
    """Peak MB of TensorFlow's CPU allocator during one call after warm-up (XLA buffers included)."""
    call()
    tf.config.experimental.reset_memory_stats("CPU:0")
    call()
    return round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20, 3)


def run_case(case: Case, reps: int, results: dict, algs=ALGS):
    fwd_first, fwd_ms, fwd_nfe = measure(sensode_forward(case), reps)
    tfp_fwd_first, tfp_fwd_ms, tfp_fwd_nfe = measure(tfp_forward(case), reps)
    common = {"case": case.name, "dtype": case.dtype.name, "rtol": case.rtol, "atol": case.atol,
              "n_save": len(case.ts_np), "n_params": case.n_params, "max_steps": case.max_steps, "reps": reps,
              "reference": case.reference_kind}
    for name in algs:
        if name in case.skip:
            print(json.dumps({**common, "alg": name, "skipped": case.skip[name]}), flush=True)
            continue
        sensealg = make_sensealg(name)
        call, _ = sensode_gradient(case, sensealg)
        first, ms, (g, nfe, ok) = measure(call, reps)
        peak = memory(call)
        if name in CONTINUOUS:
            nfe_b, src = sensode_backward_nfe(case, sensealg), "adjoint_sensitivities stats"
        elif name == "DiscreteAdjoint":
            nfe_b, src = nfe, "reverse sweep: one VJP per forward evaluation"
        elif name.startswith("DiscreteAdjoint("):
            nfe_b, src = 2 * nfe, "segments re-solved, then one VJP per evaluation"
        else:
            nfe_b, src = 0, "no backward pass (tangents carried forward)"
        results[(case.name, name)] = ms
        print(json.dumps({**common, "alg": name, "grad_ms": round(ms, 3), "first_call_s": round(first, 2),
                          "forward_ms": round(fwd_ms, 3), "grad_over_forward": round(ms / fwd_ms, 2),
                          "nfe_forward": nfe, "nfe_plain_forward": int(fwd_nfe), "nfe_backward": nfe_b,
                          "nfe_backward_source": src, "total_nfe_over_plain_forward": round((nfe + nfe_b) / int(fwd_nfe), 2),
                          "peak_mem_mb": peak, "rel_err": float(f"{case.rel_err(g):.3e}"),
                          "success": ok}), flush=True)
    call = tfp_gradient(case)
    first, ms, (g, nfe, ok) = measure(call, reps)
    peak = memory(call)
    total = tfp_total_nfe(case)
    results[(case.name, "tfp")] = ms
    print(json.dumps({**common, "alg": "tfp.DormandPrince (adjoint)", "grad_ms": round(ms, 3),
                      "first_call_s": round(first, 2), "forward_ms": round(tfp_fwd_ms, 3),
                      "grad_over_forward": round(ms / tfp_fwd_ms, 2), "nfe_forward": int(nfe),
                      "nfe_backward": total - int(nfe), "nfe_backward_source": "counter variable, tf.function without XLA",
                      "total_nfe_over_plain_forward": round(total / int(tfp_fwd_nfe), 2), "peak_mem_mb": peak,
                      "rel_err": float(f"{case.rel_err(g):.3e}"), "success": ok}), flush=True)


def flatness(reps: int):
    """Peak memory of the low-memory algorithms as the number of steps grows tenfold."""
    names = ("BacksolveAdjoint", "InterpolatingAdjoint", "InterpolatingAdjoint(checkpoints=k)",
             "DiscreteAdjoint(checkpoints=k)", "DiscreteAdjoint")
    batch = 64
    rng = np.random.default_rng(0)
    u0 = rng.uniform(0.5, 1.5, size=(batch, 2))
    out = {}
    for t1 in (10.0, 100.0):
        case = Case.__new__(Case)
        case.prob = models.lotka_volterra(u0=u0, tspan=(0.0, t1), dtype=tf.float64)
        case.ts_np = np.linspace(0.0, t1, 11)
        case.ts = tf.constant(case.ts_np, tf.float64)
        case.rtol, case.atol, case.dtype = 1e-6, 1e-8, tf.float64
        case.loss = lambda u: tf.reduce_sum(u**2)
        case.max_steps = 20000
        steps = int(tf.function(lambda: sensode_solve(case.prob, case.ts, case, sensode.DiscreteAdjoint(),
                                                      case.prob.u0, case.prob.p).stats["steps"])())
        max_steps = int(math.ceil(1.25 * steps))
        for name in names:
            call, _ = sensode_gradient(case, make_sensealg(name), max_steps=max_steps)
            peak = memory(call)
            out[(name, t1)] = peak
            print(json.dumps({"flatness": name, "t1": t1, "batch": batch, "steps": steps, "max_steps": max_steps,
                              "peak_mem_mb": peak}), flush=True)
    ratios = {name: round(out[(name, 100.0)] / max(out[(name, 10.0)], 1e-9), 2) for name in names}
    print(json.dumps({"flatness_peak_ratio_t100_over_t10": ratios,
                      "note": "1 is flat; ~10 grows with the steps (max_steps sized to 1.25x the steps)"}), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reps = 3 if _QUICK.value else _REPS.value
    print(json.dumps({"benchmark": "sensitivity", "sensode": sensode.__version__, "tensorflow": tf.__version__,
                      "tfp": tfp.__version__, "numpy": np.__version__, "python": platform.python_version(),
                      "cpus": os.cpu_count(), "devices": [d.device_type for d in tf.config.list_physical_devices()],
                      "reps": reps, "ode_method": "DP5", "mode": "xla",
                      "checkpoints": _CHECKPOINTS.value,
                      "memory": "tf.config.experimental.get_memory_info('CPU:0')['peak'] after reset_memory_stats"}),
          flush=True)
    cases = _CASES.value
    if _QUICK.value and not _CASES.present:
        cases = ["lotka_volterra"]
    algs = tuple(a for a in ALGS if not (_QUICK.value and "checkpoints" in a))
    results = {}
    for name in cases:
        run_case(Case(name), reps, results, algs)
    ratios = {}
    for name in cases:
        base = results[(name, "tfp")]
        for alg in ALGS:
            if (name, alg) in results:
                ratios[f"{name}/{alg}"] = round(results[(name, alg)] / base, 3)
    print(json.dumps({"ratios_to_tfp_xla": ratios, "note": "grad_ms / TFP-XLA grad_ms; < 1 means sensode is faster"}),
          flush=True)
    if _FLATNESS.value and not _QUICK.value:
        flatness(reps)


if __name__ == "__main__":
    app.run(main)
