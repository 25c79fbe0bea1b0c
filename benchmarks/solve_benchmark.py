"""Forward-solve benchmark: sensode against TFP's DormandPrince and SciPy.

Prints one JSON line per (case, solver, mode) and a final JSON line of ratios.
This is a script, not a test: nothing here asserts a time.

Cases:

* ``lotka_volterra``: `sensode.models.lotka_volterra()`, t in [0, 10], 101
  save points, rtol 1e-6, atol 1e-8, float64.
* ``neural_ode_mlp``: `sensode.models.neural_ode_mlp()` (2 -> 64 -> 64 -> 2,
  tanh, batch 512), t in [0, 1], 10 save points, float32, rtol 1e-5, atol 1e-6.

Solvers and modes:

* sensode ``DP5`` and ``Tsit5``: ``eager`` (a couple of repetitions only: the
  eager loop dispatches every op from Python), ``function`` (`tf.function`) and
  ``xla`` (`tf.function(jit_compile=True)`).
* ``tfp.math.ode.DormandPrince`` (the same tableau as DP5): ``function`` and
  ``xla``, same tolerances, ``solution_times`` the save points.
* SciPy ``solve_ivp(method="RK45")`` (again the DP5 tableau) with a NumPy
  right-hand side: mode ``numpy``.

Fields: ``median_ms`` is the median wall time (``time.perf_counter``) over
``--reps`` calls after the first; ``first_call_s`` is the first call (tracing
and compilation included); ``nfe`` the right-hand side evaluations reported by
each solver; ``max_abs_err`` the largest absolute difference from a SciPy
DOP853 reference at rtol 1e-12 / atol 1e-14 on all saved values.

Usage::

  python benchmarks/solve_benchmark.py            # full run, --reps=20
  python benchmarks/solve_benchmark.py --quick    # smoke run
  python benchmarks/solve_benchmark.py --cases=lotka_volterra --reps=50
"""

from __future__ import annotations

import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import sensode  # noqa: E402
from timing import measure  # noqa: E402  (benchmarks/timing.py)
from sensode import models  # noqa: E402

CASES = ("lotka_volterra", "neural_ode_mlp")

_REPS = flags.DEFINE_integer("reps", 20, "Timed repetitions after the first call (median reported).", lower_bound=1)
_EAGER_REPS = flags.DEFINE_integer("eager_reps", 2, "Timed repetitions for the slow eager mode.", lower_bound=1)
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 3 repetitions, 1 eager repetition.")
_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run, any of {', '.join(CASES)}.")
_SKIP_EAGER = flags.DEFINE_bool("skip_eager", False, "Leave out the sensode eager mode.")


# --- the two cases ----------------------------------------------------------------


class Case:
    """A problem, its save times and tolerances, and a NumPy right-hand side for SciPy."""

    def __init__(self, name: str):
        self.name = name
        if name == "lotka_volterra":
            self.prob = models.lotka_volterra(tspan=(0.0, 10.0), dtype=tf.float64)
            self.n_save = 101
            self.rtol, self.atol = 1e-6, 1e-8
            a, b, c, d = self.prob.p.numpy().tolist()

            def rhs(t, y):
                x, z = y
                return np.array([a * x - b * x * z, -c * z + d * x * z])

        elif name == "neural_ode_mlp":
            self.prob = models.neural_ode_mlp(dim=2, hidden=64, depth=2, batch=512, tspan=(0.0, 1.0), dtype=tf.float32)
            self.n_save = 10
            self.rtol, self.atol = 1e-5, 1e-6
            weights = {k: v.numpy().astype(np.float64) for k, v in self.prob.p.items()}
            n_layers = len(weights) // 2
            shape = tuple(self.prob.u0.shape)

            def rhs(t, y):
                h = y.reshape(shape)
                for i in range(n_layers):
                    h = h @ weights[f"w{i}"] + weights[f"b{i}"]
                    if i < n_layers - 1:
                        h = np.tanh(h)
                return h.reshape(-1)

        else:
            raise app.UsageError(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        self.rhs = rhs
        self.dtype = self.prob.u0.dtype
        t0, t1 = (float(x) for x in self.prob.tspan)
        self.ts_np = np.linspace(t0, t1, self.n_save)
        self.ts = tf.constant(self.ts_np, self.dtype)
        self.y0_np = self.prob.u0.numpy().astype(np.float64).reshape(-1)
        ref = solve_ivp(rhs, (t0, t1), self.y0_np, method="DOP853", t_eval=self.ts_np, rtol=1e-12, atol=1e-14)
        if not ref.success:
            raise RuntimeError(f"{name}: SciPy reference failed: {ref.message}")
        self.reference = ref.y.T  # [T, n]

    def error(self, u) -> float:
        """Max abs difference of saved states ``[T, *shape]`` from the reference."""
        return float(np.max(np.abs(np.asarray(u, np.float64).reshape(len(self.ts_np), -1) - self.reference)))


# --- solvers: each returns a zero-argument callable giving (u, nfe, ok) as NumPy ---


def sensode_runner(case: Case, alg, mode: str):
    prob = case.prob

    def run(u0, p, ts):
        # A forward solve only: `DiscreteAdjoint()` without checkpoints is the
        # plain loop (as is the forward pass of `sensealg=None`), which is what
        # TFP and SciPy run here.
        sol = sensode.solve(
            sensode.ODEProblem(prob.f, u0, prob.tspan, p),
            alg,
            saveat=ts,
            rtol=case.rtol,
            atol=case.atol,
            sensealg=sensode.DiscreteAdjoint(),
            throw=False,
        )
        return sol.u, sol.stats["nfe"], sol.status

    if mode == "function":
        run = tf.function(run)
    elif mode == "xla":
        run = tf.function(run, jit_compile=True)

    def call():
        u, nfe, status = run(prob.u0, prob.p, case.ts)
        return u.numpy(), int(nfe), int(status) == 0

    return call


def tfp_runner(case: Case, mode: str):
    prob = case.prob
    solver = tfp.math.ode.DormandPrince(rtol=case.rtol, atol=case.atol)

    def run(u0, p, ts):
        results = solver.solve(
            lambda t, y: prob.f(t, y, p),
            initial_time=ts[0],
            initial_state=u0,
            solution_times=ts,
        )
        ok = tf.equal(results.diagnostics.status, 0)
        return results.states, results.diagnostics.num_ode_fn_evaluations, ok

    run = tf.function(run, jit_compile=(mode == "xla"))

    def call():
        u, nfe, ok = run(prob.u0, prob.p, case.ts)
        return u.numpy(), int(nfe), bool(ok)

    return call


def scipy_runner(case: Case):
    span = (float(case.ts_np[0]), float(case.ts_np[-1]))

    def call():
        res = solve_ivp(case.rhs, span, case.y0_np, method="RK45", t_eval=case.ts_np, rtol=case.rtol, atol=case.atol)
        return res.y.T, int(res.nfev), bool(res.success)

    return call


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reps = 3 if _QUICK.value else _REPS.value
    eager_reps = 1 if _QUICK.value else _EAGER_REPS.value
    print(
        json.dumps(
            {
                "benchmark": "solve",
                "sensode": sensode.__version__,
                "tensorflow": tf.__version__,
                "tfp": tfp.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "devices": [d.device_type for d in tf.config.list_physical_devices()],
                "reps": reps,
                "eager_reps": eager_reps,
            }
        ),
        flush=True,
    )
    medians = {}
    for name in _CASES.value:
        case = Case(name)
        runs = []
        for alg in (sensode.DP5(), sensode.Tsit5()):
            modes = ("function", "xla") if _SKIP_EAGER.value else ("eager", "function", "xla")
            for mode in modes:
                runs.append((f"sensode.{type(alg).__name__}", mode, sensode_runner(case, alg, mode), eager_reps if mode == "eager" else reps))
        for mode in ("function", "xla"):
            runs.append(("tfp.DormandPrince", mode, tfp_runner(case, mode), reps))
        runs.append(("scipy.RK45", "numpy", scipy_runner(case), reps))

        for solver, mode, call, n in runs:
            first, median_ms, (u, nfe, ok) = measure(call, n)
            medians[(name, solver, mode)] = median_ms
            print(
                json.dumps(
                    {
                        "case": name,
                        "solver": solver,
                        "mode": mode,
                        "median_ms": round(median_ms, 4),
                        "first_call_s": round(first, 4),
                        "nfe": nfe,
                        "max_abs_err": float(f"{case.error(u):.3e}"),
                        "success": ok,
                        "rtol": case.rtol,
                        "atol": case.atol,
                        "dtype": case.dtype.name,
                        "n_save": case.n_save,
                        "reps": n,
                    }
                ),
                flush=True,
            )

    ratios = {}
    for name in _CASES.value:
        tfp_xla = medians[(name, "tfp.DormandPrince", "xla")]
        scipy_t = medians[(name, "scipy.RK45", "numpy")]
        for alg in ("DP5", "Tsit5"):
            ours = medians[(name, f"sensode.{alg}", "xla")]
            ratios[f"{name}/tfp_xla_over_{alg}_xla"] = round(tfp_xla / ours, 3)
            ratios[f"{name}/scipy_over_{alg}_xla"] = round(scipy_t / ours, 3)
    print(json.dumps({"ratios": ratios, "note": "> 1 means sensode (XLA) is faster"}), flush=True)


if __name__ == "__main__":
    app.run(main)
