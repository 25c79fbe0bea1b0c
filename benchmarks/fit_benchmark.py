"""Fitting benchmark: wall time per optimizer iteration for each sensitivity algorithm.

Prints one JSON line per (case, algorithm), each case's lines once all its
algorithms have run (so that the ratio to the fastest is known). This is a
script, not a test: nothing here asserts a time.

One iteration is what `sensode.estimation.fit` does per Adam step: the fit's
own loss-and-gradient function (`sensode.estimation.Objective`, least squares,
log scale for positive entries, ``jit_compile=True``, failed solves give
``inf``) followed by one Keras Adam update. The loop is written out here
rather than calling `fit` so that each iteration can be timed on its own.
ODE method `Tsit5()`, tolerances those of `fit` (rtol 1e-8, atol 1e-10),
float64, data generated from known parameters plus Gaussian noise.

Cases:

* ``lotka_volterra``: `sensode.models.lotka_volterra()` on t in [0, 5], 20
  observations of both states, noise 0.05; fits the 4 rates (log scale) from
  the truth times [0.8, 1.2, 0.85, 1.15]. ``max_steps=1000`` (the solve
  takes about 115 steps).
* ``brusselator_p``: `sensode.models.brusselator_1d(n)` (``2 n`` states,
  default n = 32: 64 states) on t in [0, 5], all states observed at 10 times,
  noise 0.01; fits the 3 parameters ``[A, B, alpha]`` (log scale) from the
  truth times [1.1, 0.9, 1.2]. ``max_steps=500`` (about 140 steps; explicit
  steps are limited by the diffusion's stiffness, ``alpha (n + 1)^2``, so
  ``max_steps`` is scaled by ``((n + 1) / 33)^2`` for larger ``n``).
* ``brusselator_u0``: the same data, fitting the initial state too
  (``fit_u0=True``: ``2 n + 3`` = 67 unknowns), from the true ``u0`` plus
  noise of 0.05 and the perturbed ``p``. With many unknowns the adjoints'
  single backward solve should beat forward mode's ``M`` tangents.

Under XLA the recording adjoints (`DiscreteAdjoint`, `InterpolatingAdjoint`,
`QuadratureAdjoint`) size their buffers by ``max_steps``, hence the tight
bounds above: with `fit`'s default ``max_steps=10000`` they would be slower.

Fields: ``s_per_iter`` the median wall time of one iteration over ``--iters``
iterations after ``--warmup`` untimed ones; ``compile_s`` the first
iteration (tracing, XLA compilation and one run); ``ratio_to_fastest``
``s_per_iter`` over the smallest among the case's algorithms with no failed
iteration (``null`` for an algorithm with failures); ``loss_start`` / ``loss_end`` the
loss at the first and last timed iteration; ``failed`` iterations whose solve
failed (loss ``inf``, gradient zero, Adam step skipped; `BacksolveAdjoint`
fails on every Brusselator iteration: its backward re-integration of the
state is anti-diffusion, unstable, as its docstring warns); ``grad0_rel_diff`` ``|g - g_ref| / |g_ref|`` of the
gradient at the starting point against the case's first algorithm
(ForwardSensitivity unless ``--sensealgs`` says otherwise): a check that the
algorithms compute the same thing.

Usage::

  python benchmarks/fit_benchmark.py                  # all cases, 20 timed iterations
  python benchmarks/fit_benchmark.py --quick          # Lotka-Volterra only, 5 iterations
  python benchmarks/fit_benchmark.py --cases=brusselator_u0 --n=64 --iters=10
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import sensode  # noqa: E402
from sensode import estimation, models  # noqa: E402
from sensode.compare import parse_sensealg  # noqa: E402

CASES = ("lotka_volterra", "brusselator_p", "brusselator_u0")
ALGS = ("ForwardSensitivity", "DiscreteAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint")
RTOL, ATOL = 1e-8, 1e-10  # `fit`'s defaults

_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run, any of {', '.join(CASES)}.")
_SENSEALGS = flags.DEFINE_list("sensealgs", list(ALGS), "Sensitivity algorithms (parse_sensealg syntax).")
_ITERS = flags.DEFINE_integer("iters", 20, "Timed iterations (median reported).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed iterations after the first (compiling) one.", lower_bound=0)
_N = flags.DEFINE_integer("n", 32, "Grid points of brusselator_1d (2 n states).", lower_bound=2)
_LR = flags.DEFINE_float("learning_rate", 0.01, "Adam's learning rate.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: Lotka-Volterra only (unless --cases is given), 5 iterations, 1 warm-up.")


class Case:
    """Starting problem, observation times, data and what is fitted."""

    def __init__(self, name: str, n: int):
        self.name = name
        rng = np.random.default_rng(0)
        if name == "lotka_volterra":
            truth = models.lotka_volterra(tspan=(0.0, 5.0))
            self.times = np.linspace(0.25, 5.0, 20)
            noise, p_factor, self.max_steps = 0.05, [0.8, 1.2, 0.85, 1.15], 1000
            self.fit_u0 = False
        elif name in ("brusselator_p", "brusselator_u0"):
            truth = models.brusselator_1d(n=n, tspan=(0.0, 5.0))
            self.times = np.linspace(0.5, 5.0, 10)
            # Explicit steps are stability-limited, their number grows like (n + 1)^2.
            noise, p_factor = 0.01, [1.1, 0.9, 1.2]
            self.max_steps = int(500 * max(1.0, ((n + 1) / 33) ** 2))
            self.fit_u0 = name == "brusselator_u0"
        else:
            raise app.UsageError(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        clean = sensode.solve(truth, sensode.Tsit5(), saveat=tf.constant(self.times), rtol=1e-10, atol=1e-12,
                              max_steps=20000).u.numpy()
        self.data = clean + noise * rng.normal(size=clean.shape)
        u0 = truth.u0
        if self.fit_u0:
            u0 = u0 + tf.constant(0.05 * rng.normal(size=u0.shape), u0.dtype)
        self.guess = truth.remake(u0=u0, p=truth.p * tf.constant(p_factor, truth.p.dtype))
        self.n_states = int(truth.u0.shape.num_elements())
        self.n_params = int(truth.p.shape.num_elements()) + (self.n_states if self.fit_u0 else 0)


def run_one(case: Case, sensealg, iters: int, warmup: int) -> dict:
    obj = estimation.Objective(
        case.guess, case.times, case.data, observe=None, loss=None, fit_u0=case.fit_u0, positive=True,
        positive_u0=False, mask_nan=False, alg=sensode.Tsit5(), sensealg=sensealg, rtol=RTOL, atol=ATOL,
        max_steps=case.max_steps, jit_compile=True,
    )
    var = tf.Variable(obj.to_z(obj.theta0), dtype=tf.float64)
    opt = keras.optimizers.Adam(_LR.value)
    times, losses, failed, grad0 = [], [], 0, None
    for i in range(1 + warmup + iters):
        start = time.perf_counter()
        value, grad, bad = obj(var)
        if not bool(bad):
            opt.apply_gradients([(grad, var)])
        value = float(value)  # forces the step to finish
        times.append(time.perf_counter() - start)
        losses.append(value)
        failed += int(bool(bad))
        if i == 0:
            grad0 = grad.numpy()
    timed = times[1 + warmup:]
    return {
        "s_per_iter": statistics.median(timed),
        "compile_s": times[0],
        "loss_start": losses[1 + warmup],
        "loss_end": losses[-1],
        "failed": failed,
        "grad0": grad0,
    }


def main(argv):
    del argv
    cases = _CASES.value
    iters, warmup = _ITERS.value, _WARMUP.value
    if _QUICK.value:
        if "cases" not in flags.FLAGS or not flags.FLAGS["cases"].present:
            cases = ["lotka_volterra"]
        iters, warmup = 5, 1
    meta = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "tf": tf.__version__,
        "sensode": getattr(sensode, "__version__", "?"), "iters": iters, "warmup": warmup,
        "rtol": RTOL, "atol": ATOL, "alg": "Tsit5", "jit_compile": True, "n": _N.value,
    }
    print(json.dumps({"meta": meta}), flush=True)
    for name in cases:
        case = Case(name, _N.value)
        rows = []
        for text in _SENSEALGS.value:
            logging.info("%s / %s ...", name, text)
            r = run_one(case, parse_sensealg(text), iters, warmup)
            rows.append({"case": name, "sensealg": text, "n_states": case.n_states, "n_fitted": case.n_params,
                         "max_steps": case.max_steps, **r})
        # An algorithm whose solves failed (BacksolveAdjoint on the Brusselator: the
        # backward state solve runs the diffusion in reverse) has no meaningful time.
        ok = [r["s_per_iter"] for r in rows if r["failed"] == 0]
        fastest = min(ok) if ok else float("nan")
        g_ref = rows[0]["grad0"]
        for r in rows:
            g = r.pop("grad0")
            r["ratio_to_fastest"] = round(r["s_per_iter"] / fastest, 2) if r["failed"] == 0 else None
            r["grad0_rel_diff"] = float(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref))
            r["s_per_iter"] = round(r["s_per_iter"], 5)
            r["compile_s"] = round(r["compile_s"], 2)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    app.run(main)
