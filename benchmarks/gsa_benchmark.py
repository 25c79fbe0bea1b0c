"""Global sensitivity analysis benchmark: one JSON line per case (run from the repository root).

1. ``sobol``: Sobol indices of Lotka-Volterra (4 parameters over ±50%, N base
   samples, N (D + 2) solves): sensode end to end (design, compiled ensembles,
   estimators; tracing and XLA compilation included) against SALib driving
   ``scipy.integrate.solve_ivp`` one solve at a time, in the same run and at
   the same tolerances. ``--scipy_max`` caps the SciPy solves actually run
   (the rest is extrapolated, marked ``"extrapolated": true``).
2. ``ensemble``: solves per second of per-sample stepping (the native batched
   loop under XLA and in a graph; on the homogeneous batch also the older
   routes, ``map_fn`` under XLA and pfor in a graph) against the shared-step
   batched solve (XLA), on a homogeneous batch (p within ±10%) and a
   heterogeneous one (p over two orders of magnitude), with ``max_steps``
   20000 and 2000. The modes of a batch are timed in the same rounds,
   interleaved; medians of the times and of the per-round ratios.

Default: a short run (N = 256, B = 256). The issue's figures: ``--n=4096 --batch=4096``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import sensode as sd  # noqa: E402
from sensode import gsa  # noqa: E402

_N = flags.DEFINE_integer("n", 256, "Sobol base samples N (a power of two).", lower_bound=2)
_B = flags.DEFINE_integer("batch", 256, "Ensemble size of the throughput cases.", lower_bound=2)
_REPS = flags.DEFINE_integer("reps", 5, "Timed repetitions after the first call.", lower_bound=1)
_SCIPY_MAX = flags.DEFINE_integer("scipy_max", 2000, "At most this many SciPy solves are run (rest extrapolated).", lower_bound=1)
_CASES = flags.DEFINE_list("cases", ["sobol", "ensemble"], "Cases: sobol, ensemble.")
RTOL, ATOL = 1e-6, 1e-8


def sobol_case():
    from scipy.integrate import solve_ivp

    n = _N.value
    prob, space = gsa.model_space("lotka_volterra")
    saveat = np.linspace(0.0, 10.0, 21)
    start = time.perf_counter()
    model = gsa.ODEModel(prob, "final", saveat=tf.constant(saveat), rtol=RTOL, atol=ATOL, batch_size=4096)
    ours = gsa.sobol(model, space, n)
    t_ours = time.perf_counter() - start

    from SALib.analyze import sobol as salib_sobol
    from SALib.sample import sobol as salib_sample

    def lv(t, u, a, b, c, d):
        return [a * u[0] - b * u[0] * u[1], -c * u[1] + d * u[0] * u[1]]

    start = time.perf_counter()
    x = salib_sample.sample(space.to_salib(), n, calc_second_order=False, seed=0)
    run = min(len(x), _SCIPY_MAX.value)
    y = np.empty(run)
    for i in range(run):
        sol = solve_ivp(lv, (0.0, 10.0), [1.0, 1.0], args=tuple(x[i]), t_eval=saveat, rtol=RTOL, atol=ATOL)
        y[i] = sol.y[0, -1]
    t_scipy = (time.perf_counter() - start) * len(x) / run
    if run == len(x):
        theirs = salib_sobol.analyze(space.to_salib(), y, calc_second_order=False, seed=0)
        agree = float(np.max(np.abs(theirs["ST"] - ours.ST)))
    else:
        agree = None
    print(json.dumps({
        "case": "sobol_lotka_volterra", "n": n, "solves": int(len(x)), "sensode_s": round(t_ours, 3),
        "salib_scipy_s": round(t_scipy, 3), "ratio": round(t_ours / t_scipy, 4), "extrapolated": run < len(x),
        "scipy_solves_run": run, "max_abs_ST_difference": agree, "S1": np.round(ours.S1, 4).tolist(), "ST": np.round(ours.ST, 4).tolist(),
        "failed": model.failed,
    }), flush=True)


def _ensemble_batches(prob, b):
    rng = np.random.default_rng(0)
    nominal = np.asarray(prob.p)[None]
    return {
        # p within ±10%: the samples need similar steps.
        "homogeneous": (nominal * rng.uniform(0.9, 1.1, size=(b, 4)), 20000),
        # each parameter over two orders of magnitude; a few samples need more
        # than max_steps in their own single solves (MAX_STEPS / DT_MIN there too).
        "heterogeneous": (nominal * 10 ** rng.uniform(-1.0, 1.0, size=(b, 4)), 20000),
        # the same batch with max_steps = 2000.
        "heterogeneous_max_steps_2000": (None, 2000),
    }


_MODES = {
    # name: (solve_ensemble options, jit_compile, run on which batches)
    "per_sample_native_xla": (dict(stepping="per_sample", vectorize="native"), True, None),
    "per_sample_native_graph": (dict(stepping="per_sample", vectorize="native"), False, ("homogeneous",)),
    "shared_xla": (dict(stepping="shared"), True, None),
    # the routes before the native loop (slow: homogeneous batch only)
    "per_sample_map_xla": (dict(stepping="per_sample", vectorize="map"), True, ("homogeneous",)),
    "per_sample_pfor_graph": (dict(stepping="per_sample", vectorize="pfor"), False, ("homogeneous",)),
}


def ensemble_case():
    """Solves per second, every mode of a batch timed in the same rounds (interleaved), medians."""
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 11)
    b = _B.value
    batches = _ensemble_batches(prob, b)
    for kind, (p, max_steps) in batches.items():
        if p is None:
            p = batches["heterogeneous"][0]
        opts = dict(saveat=ts, rtol=RTOL, atol=ATOL, max_steps=max_steps, throw=False)
        pt = tf.constant(p)
        fns, first, sols = {}, {}, {}
        for name, (kw, jit, only) in _MODES.items():
            if only is not None and kind not in only:
                continue
            fns[name] = tf.function(lambda p, kw=kw: gsa.solve_ensemble(prob, p=p, **opts, **kw), jit_compile=jit,
                                    autograph=False)
            start = time.perf_counter()
            sols[name] = fns[name](pt)
            sols[name].status.numpy()
            first[name] = time.perf_counter() - start
        times = {name: [] for name in fns}
        ratios = {name: [] for name in fns}
        for _ in range(_REPS.value):
            rep = {}
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(pt).status.numpy()
                rep[name] = time.perf_counter() - start
                times[name].append(rep[name])
            for name in fns:
                ratios[name].append(rep["shared_xla"] / rep[name])
        for name in fns:
            ms = 1e3 * statistics.median(times[name])
            steps = sols[name].stats["steps"].numpy()
            status = sols[name].status.numpy()
            print(json.dumps({
                "case": "ensemble", "batch": kind, "mode": name, "B": b, "max_steps": max_steps,
                "first_call_s": round(first[name], 2), "ms": round(ms, 2), "solves_per_s": round(b / (ms / 1e3), 1),
                "failed": int(np.sum(status != 0)), "steps_mean": float(steps.mean()), "steps_max": int(steps.max()),
            }), flush=True)
        for name in fns:
            if name != "shared_xla":
                print(json.dumps({"ratio": f"{name} / shared_xla", "batch": kind, "B": b,
                                  "median_of_rounds": round(statistics.median(ratios[name]), 3),
                                  "note": "throughput ratio, > 1: per-sample is faster"}), flush=True)




def main(argv):
    del argv
    if "sobol" in _CASES.value:
        sobol_case()
    if "ensemble" in _CASES.value:
        ensemble_case()


if __name__ == "__main__":
    app.run(main)
