"""Fit reaction-network rate constants to steady-state measurements (implicit adjoint).

Network (per experiment b with a known inflow s_b):

    -> X   at rate s_b
    X -> Y at rate vmax x / (km + x)   (saturating enzyme)
    Y ->   at rate kd y

Steady state: ``x* = km s / (vmax - s)``, ``y* = s / kd``. Both species are
measured at steady state for ``--experiments`` inflows, with relative noise
``--noise``. The parameters are fitted with TFP's L-BFGS. Each loss evaluation
solves all experiments' steady states at once (a batch of `SteadyStateProblem`
rows, `NewtonRaphson` from ``u = 1``), and its gradient comes from the implicit
adjoint (`sensode.SteadyStateAdjoint`: one transposed linear solve, whatever
the number of Newton iterations).

Parameterisation: a steady state exists only when ``vmax > s`` for every
inflow (otherwise the enzyme cannot keep up and ``x`` grows without bound).
The fitted variables are ``log(vmax - max s)``, ``log km`` and ``log kd``, so
every trial point of the line search is feasible. Fitting ``log vmax``
directly (as this example once did) lets L-BFGS try ``vmax < max s``; the
line search then fails and L-BFGS stops with ``converged=False`` away from the
minimum. A trial whose solve still fails gets an infinite loss, which the line
search backs off from.

``converged`` is TFP's test: the gradient's max-norm fell below
``--tolerance``.

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
TOLERANCE = flags.DEFINE_float("tolerance", 1e-8, "L-BFGS stops when the gradient's max-norm is below this.")

TRUE = np.array([2.0, 0.5, 0.8])  # vmax, km, kd


def rates(theta, s_max):
    """``[vmax, km, kd]`` from the fitted variables ``[log(vmax - s_max), log km, log kd]``."""
    e = tf.exp(theta)
    return tf.stack([s_max + e[0], e[1], e[2]])


def rhs(t, u, p):
    vmax, km, kd = tf.unstack(rates(p["theta"], tf.reduce_max(p["s"])))
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
    def loss_and_grad(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            prob = sensode.SteadyStateProblem(rhs, u_guess, {"theta": theta, "s": s})
            sol = sensode.solve(prob, sensode.NewtonRaphson(), sensealg=sensode.SteadyStateAdjoint(), throw=False)
            loss = tf.reduce_sum(tf.square((sol.u - data) / data))
        grad = tape.gradient(loss, theta)
        bad = tf.logical_or(tf.not_equal(sol.status, 0), tf.logical_not(tf.math.is_finite(loss)))
        return tf.where(bad, tf.constant(np.inf, tf.float64), loss), tf.where(bad, tf.zeros_like(grad), grad)

    start = time.perf_counter()
    s_max = float(np.max(s.numpy()))
    x0 = tf.constant(np.log([3.0 - s_max, 1.0, 0.5]), tf.float64)  # start from vmax 3, km 1, kd 0.5
    res = tfp.optimizer.lbfgs_minimize(
        loss_and_grad, initial_position=x0, max_iterations=100, tolerance=TOLERANCE.value
    )
    est = rates(res.position, s_max).numpy()
    grad_norm = float(tf.reduce_max(tf.abs(res.objective_gradient)))
    print(f"L-BFGS: converged={bool(res.converged)} (gradient max-norm {grad_norm:.1e}, tolerance "
          f"{TOLERANCE.value:g}), {int(res.num_objective_evaluations)} evaluations, "
          f"loss {float(res.objective_value):.3e}, {time.perf_counter() - start:.1f} s")
    if not bool(res.converged):
        print("  not converged: " + ("the line search failed (see the docstring)" if bool(res.failed)
                                     else "max_iterations reached"))
    print(f"{'':>6} {'estimate':>10} {'truth':>8}")
    for name, e, t in zip(["vmax", "km", "kd"], est, TRUE):
        print(f"{name:>6} {e:10.4f} {t:8.4f}")


if __name__ == "__main__":
    app.run(main)
