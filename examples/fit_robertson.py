"""Fit Robertson's rate constants (log scale) to noisy data with Rodas5, with standard errors.

Data: `sensode.models.robertson` (k = 0.04, 3e7, 1e4) at ``--points``
log-spaced times in [1e-2, ``--t1``]; the observations are ``y1``, ``1e4 y2``
and ``y3`` (``y2`` is ~1e-5, so it is scaled to the others' size) with
relative Gaussian noise ``--noise``. The fit works on ``log k``
(`models.robertson(log_rates=True)`): positive rates and one scale for every
sensitivity. Prints the estimates +- Gauss--Newton standard errors next to
the truth.

Usage:
  python examples/fit_robertson.py --noise=0.01 --sensealg=ForwardSensitivity
"""

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

import sensode
from sensode import estimation, models
from sensode.compare import parse_sensealg

NOISE = flags.DEFINE_float("noise", 0.01, "Relative standard deviation of the observation noise.")
POINTS = flags.DEFINE_integer("points", 15, "Number of observation times.")
T1 = flags.DEFINE_float("t1", 1e3, "Final time.")
SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")
SENSEALG = flags.DEFINE_string("sensealg", "ForwardSensitivity", "Sensitivity algorithm, e.g. QuadratureAdjoint.")

TRUE_K = np.array([0.04, 3e7, 1e4])
SCALE = tf.constant([1.0, 1e4, 1.0], tf.float64)


def main(argv):
    del argv
    truth = models.robertson(k=TRUE_K, log_rates=True, tspan=(0.0, T1.value))
    times = np.logspace(-2, np.log10(T1.value), POINTS.value)
    clean = sensode.solve(truth, sensode.Rodas5(), saveat=tf.constant(times), rtol=1e-10, atol=1e-14).u
    clean = (clean * SCALE).numpy()
    rng = np.random.default_rng(SEED.value)
    data = clean * (1.0 + NOISE.value * rng.normal(size=clean.shape))
    guess = truth.remake(p=tf.constant(np.log(TRUE_K * [1.5, 0.6, 1.4]), tf.float64))
    start = time.perf_counter()
    res = estimation.fit(guess, times, data, observe=lambda u: u * SCALE, alg=sensode.Rodas5(),
                         sensealg=parse_sensealg(SENSEALG.value), rtol=1e-8, atol=1e-12)
    print(f"fit of log k with Rodas5 and {SENSEALG.value}: {time.perf_counter() - start:.1f} s")
    print(res.summary(truth=np.log(TRUE_K)))


if __name__ == "__main__":
    app.run(main)
