"""Fit reaction-network rate constants to steady-state measurements (implicit adjoint).

Network (per experiment b with a known inflow s_b):

    -> X   at rate s_b
    X -> Y at rate vmax x / (km + x)   (saturating enzyme)
    Y ->   at rate kd y

Steady state: ``x* = km s / (vmax - s)``, ``y* = s / kd``. Both species are
measured at steady state for ``--experiments`` inflows, with relative noise
``--noise``. The parameters ``[vmax, km, kd]`` are fitted on a log scale with
TFP's L-BFGS; each loss evaluation solves all experiments' steady states at
once (a batch of `SteadyStateProblem` rows, Newton--Raphson) and its gradient
(a batch of rows, `DynamicSS`: integrate to steady state, robust where Newton from a poor guess is not) comes from the implicit adjoint (`sensode.SteadyStateAdjoint`: one transposed
linear solve, whatever the Newton iterations).

Usage:
  python examples/fit_steady_state.py --noise=0.02
"""

import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

import sensode

NOISE = flags.DEFINE_float("noise", 0.02, "Relative measurement noise.")
EXPERIMENTS = flags.DEFINE_integer("experiments", 8, "Number of inflow conditions.")
SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")

TRUE = np.array([2.0, 0.5, 0.8])  # vmax, km, kd


def rhs(t, u, p):
    vmax, km, kd = tf.unstack(tf.exp(p["log_k"]))
    x, y = u[:, 0], u[:, 1]
    flux = vmax * x / (km + x)
    return tf.stack([p["s"] - flux, flux - kd * y], axis=-1)


def main(argv):
    del argv
    s = tf.constant(np.linspace(0.2, 1.6, EXPERIMENTS.value), tf.float64)
    vmax, km, kd = TRUE
    exact = np.stack([km * s.numpy() / (vmax - s.numpy()), s.numpy() / kd], axis=-1)
    data = exact * (1.0 + NOISE.value * np.random.default_rng(SEED.value).normal(size=exact.shape))
    u_guess = tf.ones([EXPERIMENTS.value, 2], tf.float64)

    @tf.function(autograph=False)
    def loss_and_grad(log_k):
        with tf.GradientTape() as tape:
            tape.watch(log_k)
            prob = sensode.SteadyStateProblem(rhs, u_guess, {"log_k": log_k, "s": s})
            sol = sensode.solve(prob, sensode.NewtonRaphson(), sensealg=sensode.SteadyStateAdjoint(), throw=False)
            loss = tf.reduce_sum(tf.square((sol.u - data) / data))
        grad = tape.gradient(loss, log_k)
        bad = tf.logical_or(tf.not_equal(sol.status, 0), tf.logical_not(tf.math.is_finite(loss)))
        return tf.where(bad, tf.constant(np.inf, tf.float64), loss), tf.where(bad, tf.zeros_like(grad), grad)

    start = time.perf_counter()
    x0 = tf.constant(np.log([3.0, 1.0, 0.5]), tf.float64)
    res = tfp.optimizer.lbfgs_minimize(loss_and_grad, initial_position=x0, max_iterations=100, tolerance=1e-10)
    est = np.exp(res.position.numpy())
    print(f"L-BFGS: converged={bool(res.converged)}, {int(res.num_objective_evaluations)} evaluations, "
          f"loss {float(res.objective_value):.3e}, {time.perf_counter() - start:.1f} s")
    print(f"{'':>6} {'estimate':>10} {'truth':>8}")
    for name, e, t in zip(["vmax", "km", "kd"], est, TRUE):
        print(f"{name:>6} {e:10.4f} {t:8.4f}")


if __name__ == "__main__":
    app.run(main)
