"""Stiff methods against SciPy Radau / BDF (analytic Jacobian), measured in the same run.

Prints one JSON line per (problem, method): warm forward time under XLA, steps,
the error against a tight Radau reference, and the ratio to SciPy Radau's
time; a gradient line (best algorithm) per problem; and the overhead of
`AutoTsit5Rodas5` against `Tsit5` on a non-stiff problem (the condition for
making it the default: at most 1.10).

    python benchmarks/stiff_benchmark.py            # short: Robertson, VdP, HIRES, ngroups = 1, 10
    python benchmarks/stiff_benchmark.py --full     # adds ngroups = 100 and more repetitions

Run from the repository root. CasADi/CVODES is not measured (not a
dependency; install it in a separate virtualenv to compare).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from timing import measure  # noqa: E402

import sensode as sd  # noqa: E402
from sensode import models  # noqa: E402

flags.DEFINE_bool("full", False, "Full sizes (Robertson ngroups up to 100) and more repetitions.")
flags.DEFINE_integer("reps", 3, "Warm repetitions per measurement.")
FLAGS = flags.FLAGS

K = (0.04, 3e7, 1e4)


def rober_np(ngroups):
    def f(t, u):
        u = u.reshape(ngroups, 3)
        r1, r2, r3 = K[0] * u[:, 0], K[1] * u[:, 1] ** 2, K[2] * u[:, 1] * u[:, 2]
        return np.stack([-r1 + r3, r1 - r2 - r3, r2], axis=1).ravel()

    def jac(t, u):
        u = u.reshape(ngroups, 3)
        j = np.zeros((3 * ngroups, 3 * ngroups))
        for g in range(ngroups):
            y1, y2, y3 = u[g]
            j[3 * g:3 * g + 3, 3 * g:3 * g + 3] = [
                [-K[0], K[2] * y3, K[2] * y2],
                [K[0], -2 * K[1] * y2 - K[2] * y3, -K[2] * y2],
                [0.0, 2 * K[1] * y2, 0.0]]
        return j

    return f, jac


def vdp_np(mu):
    f = lambda t, u: np.array([u[1], mu * (1 - u[0] ** 2) * u[1] - u[0]])  # noqa: E731
    jac = lambda t, u: np.array([[0.0, 1.0], [-2 * mu * u[0] * u[1] - 1.0, mu * (1 - u[0] ** 2)]])  # noqa: E731
    return f, jac


def hires_np():
    """NumPy HIRES and its analytic Jacobian (the peers' `stiff_rhs`, written apart from sensode.models)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "peers"))
    from stiff_rhs import hires_f, hires_jac

    k = models.hires().p.numpy()
    return (lambda t, u: np.asarray(hires_f(u, k))), (lambda t, u: hires_jac(u, k))


def scipy_time(f, jac, u0, t1, rtol, atol, method):
    def call():
        return solve_ivp(f, (0.0, t1), u0, method=method, rtol=rtol, atol=atol, jac=jac)

    first, ms, res = measure(call, max(1, FLAGS.reps // 2))
    return ms, res


def bench(name, prob, f_np, jac_np, rtol, atol, methods, max_steps=20000):
    t1 = float(prob.tspan[1])
    u0 = prob.u0.numpy().ravel()
    ref = solve_ivp(f_np, (0.0, t1), u0, method="Radau", rtol=1e-11, atol=atol * 1e-3, jac=jac_np).y[:, -1]
    base = {}
    for m in ("Radau", "BDF"):
        ms, res = scipy_time(f_np, jac_np, u0, t1, rtol, atol, m)
        base[m] = ms
        print(json.dumps({"problem": name, "method": f"scipy.{m}", "ms": round(ms, 2), "nfev": int(res.nfev),
                          "njev": int(res.njev), "err": float(np.max(np.abs(res.y[:, -1] - ref) / (atol + rtol * np.abs(ref))))}),
              flush=True)
    for method in methods:
        run = tf.function(lambda: sd.solve(prob, method, rtol=rtol, atol=atol, max_steps=max_steps, throw=False),
                          jit_compile=True)
        first, ms, sol = measure(run, FLAGS.reps)
        err = np.max(np.abs(sol.u.numpy()[-1].ravel() - ref) / (atol + rtol * np.abs(ref)))
        print(json.dumps({"problem": name, "method": method.name, "mode": "xla", "compile_s": round(first, 1),
                          "ms": round(ms, 2), "status": int(sol.status),
                          "steps": int(sol.stats["steps"]), "njac": int(sol.stats.get("njac", 0)),
                          "err_in_tol_units": float(err), "ratio_vs_radau": round(ms / base["Radau"], 3),
                          "ratio_vs_bdf": round(ms / base["BDF"], 3)}), flush=True)


def gradient(name, prob, rtol, atol):
    """Best-gradient time: every algorithm with Rodas5 under XLA (loss: sum of the final state)."""
    rows = []
    for sa in (sd.ForwardSensitivity(), sd.DiscreteAdjoint(), sd.InterpolatingAdjoint(), sd.QuadratureAdjoint()):
        @tf.function(jit_compile=True)
        def grad(p, sa=sa):
            with tf.GradientTape() as tape:
                tape.watch(p)
                sol = sd.solve(prob.remake(p=p), sd.Rodas5(), rtol=rtol, atol=atol, sensealg=sa, throw=False,
                               max_steps=20000)
                loss = tf.reduce_sum(sol.u[-1])
            return tape.gradient(loss, p)

        try:
            first, ms, g = measure(lambda: grad(prob.p), FLAGS.reps)
            rows.append((ms, type(sa).__name__, first))
        except Exception as e:  # report, do not hide: a row per failure
            print(json.dumps({"problem": name, "gradient": type(sa).__name__, "error": repr(e)[:200]}), flush=True)
    for ms, sa, first in sorted(rows):
        print(json.dumps({"problem": name, "gradient": sa, "method": "Rodas5", "mode": "xla", "ms": round(ms, 2),
                          "compile_s": round(first, 1), "best": sa == sorted(rows)[0][1]}), flush=True)


def auto_overhead():
    """AutoTsit5Rodas5 vs Tsit5 on non-stiff Lotka-Volterra: solves (100 save points and none) and the
    gradient with each sensitivity algorithm, graph and XLA, interleaved calls, medians, same run."""
    prob = models.lotka_volterra()
    ts = tf.constant(np.linspace(0.0, 10.0, 100))

    def solve(m, saveat):
        return lambda: sd.solve(prob, m, saveat=saveat, rtol=1e-6, atol=1e-8).u

    def grad(m, sa):
        def run():
            with tf.GradientTape() as tape:
                tape.watch(prob.p)
                loss = tf.reduce_sum(sd.solve(prob, m, saveat=ts, sensealg=sa, rtol=1e-6, atol=1e-8).u ** 2)
            return tape.gradient(loss, prob.p)
        return run

    cases = [("solve saveat=100", lambda m: solve(m, ts), 200), ("solve", lambda m: solve(m, None), 200)]
    cases += [(f"gradient {type(sa).__name__}", lambda m, sa=sa: grad(m, sa), 15)
              for sa in (sd.ForwardSensitivity(), sd.DiscreteAdjoint(), sd.InterpolatingAdjoint())]
    for jit in (False, True):
        for what, make, reps in cases:
            reps = reps if jit else max(reps // 10, 10)
            fns, first = {}, {}
            for m in (sd.Tsit5(), sd.AutoTsit5Rodas5()):
                fns[m.name] = tf.function(make(m), jit_compile=jit)
                start = time.perf_counter()
                fns[m.name]()
                first[m.name] = time.perf_counter() - start
            times = {k: [] for k in fns}
            for _ in range(reps):
                for k, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            print(json.dumps({"problem": "lotka_volterra", "auto_overhead": what, "mode": "xla" if jit else "graph",
                              "tsit5_ms": round(ms["Tsit5"], 3), "auto_ms": round(ms["AutoTsit5Rodas5"], 3),
                              "auto_over_tsit5": round(ms["AutoTsit5Rodas5"] / ms["Tsit5"], 3),
                              "first_call_s": [round(first["Tsit5"], 1), round(first["AutoTsit5Rodas5"], 1)],
                              "load": round(os.getloadavg()[0], 1)}), flush=True)


def main(argv):
    del argv
    stiff = [sd.Rodas5(), sd.Rosenbrock23(), sd.Kvaerno5(), sd.AutoTsit5Rodas5()]
    auto_overhead()
    f, jac = rober_np(1)
    bench("robertson", models.robertson(), f, jac, 1e-6, 1e-10, stiff)
    f, jac = vdp_np(1000.0)
    bench("van_der_pol_mu1000", models.van_der_pol(mu=1000.0, tspan=(0.0, 3000.0)), f, jac, 1e-6, 1e-8, stiff)
    f, jac = hires_np()
    bench("hires", models.hires(), f, jac, 1e-6, 1e-8, [sd.Rodas5(), sd.Kvaerno5()])
    for n in (10, 100) if FLAGS.full else (10,):
        u0 = np.tile([1.0, 0.0, 0.0], (n, 1))
        prob = models.robertson(u0=u0)
        f, jac = rober_np(n)
        bench(f"robertson_ngroups{n}", prob, f, jac, 1e-6, 1e-10, [sd.Rodas5()])
    gradient("robertson", models.robertson(log_rates=True), 1e-8, 1e-12)


if __name__ == "__main__":
    app.run(main)
