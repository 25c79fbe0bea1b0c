"""Posterior of the Lotka--Volterra parameters by Hamiltonian Monte Carlo on sensode gradients.

Data: `sensode.models.lotka_volterra` with p = [1.5, 1, 3, 1] solved at
``--points`` times in (0, ``--t1``], plus Gaussian noise of known standard
deviation ``--noise`` (float64 throughout).

Model: ``z = log p`` with independent priors ``z_i ~ Normal(log m_i, s)``
(log-normal priors on ``p``, medians ``m = [1, 1, 2, 1]`` and ``s =
--prior_scale``: deliberately off the truth, so the data must move them), and
the likelihood ``data ~ Normal(u(t; p), noise)``. The sampler works on ``z``,
so every proposal is a valid positive ``p``, and the log-density of ``z``
needs no Jacobian term (the prior is placed on ``z`` itself).

The target's value and gradient come from one `tf.function(jit_compile=True)`
that solves the ODE with ``sensealg=sensode.ForwardSensitivity()`` (4
parameters: forward mode is the cheap choice, see
docs/choosing-sensitivity-algorithm.md) and ``throw=False``; a solve that
fails at a proposal (``sol.status != 0``: step limit, step-size underflow,
non-finite state) gives log-density ``-inf`` and gradient 0, which the
Metropolis test then rejects. `tf.custom_gradient` hands that gradient to
TFP, so the chain never re-traces the solve.

The chain starts at the posterior mode, found by `tfp.optimizer.lbfgs_minimize`
on the same target from the prior median. By default the sampler moves in
whitened coordinates ``w``, ``z = z_map + L w``, with ``L L^T`` the Laplace
(Gauss--Newton) covariance at the mode from `sensode.forward_sensitivities`
(``--noprecondition`` samples ``z`` directly, which needs far smaller steps
and mixes poorly: the posterior is narrow and strongly correlated). Sampler: `tfp.mcmc.HamiltonianMonteCarlo` (``--kernel=hmc``, ``--leapfrog``
steps) or `tfp.mcmc.NoUTurnSampler` (``--kernel=nuts``), wrapped in
`tfp.mcmc.SimpleStepSizeAdaptation` for the first 80% of ``--burnin``, then
``--samples`` draws. One chain; this is a demonstration, not a convergence
study (run longer, or several seeds, before trusting the tails).

Prints the posterior mean and 90% interval of each parameter next to the
truth, the acceptance rate and the wall time; with matplotlib installed it
also writes ``--png`` (traces and marginal histograms).

Usage:
  python examples/bayesian_lotka_volterra.py
  python examples/bayesian_lotka_volterra.py --kernel=nuts --burnin=500 --samples=1000
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from absl import app, flags  # noqa: E402

import sensode  # noqa: E402
from sensode import models  # noqa: E402

NOISE = flags.DEFINE_float("noise", 0.1, "Standard deviation of the observation noise (known to the model).")
POINTS = flags.DEFINE_integer("points", 20, "Number of observation times.")
T1 = flags.DEFINE_float("t1", 5.0, "Final time.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise and of the sampler.")
PRIOR_SCALE = flags.DEFINE_float("prior_scale", 0.5, "Standard deviation of the normal priors on log p.")
KERNEL = flags.DEFINE_enum("kernel", "hmc", ["hmc", "nuts"], "MCMC kernel.")
LEAPFROG = flags.DEFINE_integer("leapfrog", 8, "Leapfrog steps per HMC proposal.")
BURNIN = flags.DEFINE_integer("burnin", 300, "Burn-in steps (step size adapted during the first 80%).")
SAMPLES = flags.DEFINE_integer("samples", 300, "Posterior draws kept after burn-in.")
PRECONDITION = flags.DEFINE_bool(
    "precondition", True, "Sample w with z = z_map + L w, L from the Laplace (Gauss-Newton) covariance at the mode.")
RTOL = flags.DEFINE_float("rtol", 1e-6, "Relative tolerance of the solves inside the chain.")
PNG = flags.DEFINE_string("png", "bayesian_lotka_volterra.png", "Figure path (written only if matplotlib is installed).")

TRUE_P = np.array([1.5, 1.0, 3.0, 1.0])
PRIOR_MEDIAN = np.array([1.0, 1.0, 2.0, 1.0])
NAMES = ["a (prey growth)", "b (predation)", "c (predator death)", "d (predator growth)"]


def make_target(prob, times, data):
    """``z [4] -> log p(z | data)`` up to a constant, with its gradient from one XLA function."""
    times = tf.constant(times, tf.float64)
    data = tf.constant(data, tf.float64)
    prior = tfp.distributions.Normal(tf.constant(np.log(PRIOR_MEDIAN), tf.float64),
                                     tf.constant(PRIOR_SCALE.value, tf.float64))
    noise = tf.constant(NOISE.value, tf.float64)

    @tf.function(jit_compile=True, autograph=False)
    def log_prob_and_grad(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            sol = sensode.solve(prob.remake(p=tf.exp(z)), sensode.Tsit5(), saveat=times,
                                sensealg=sensode.ForwardSensitivity(), rtol=RTOL.value, atol=1e-3 * RTOL.value,
                                max_steps=2000, throw=False)
            resid = (sol.u - data) / noise
            log_lik = -0.5 * tf.reduce_sum(resid * resid)
            lp = tf.reduce_sum(prior.log_prob(z)) + log_lik
        grad = tape.gradient(lp, z)
        ok = tf.logical_and(tf.equal(sol.status, 0), tf.math.is_finite(lp))
        ok = tf.logical_and(ok, tf.reduce_all(tf.math.is_finite(grad)))
        neg_inf = tf.constant(-np.inf, tf.float64)
        return tf.where(ok, lp, neg_inf), tf.where(ok, grad, tf.zeros_like(grad))

    @tf.custom_gradient
    def target_log_prob(z):
        # stop_gradient: an outer tape must not record inside the XLA function (TF would then
        # export the loop's TensorLists across the XLA boundary, which it cannot do).
        lp, grad = log_prob_and_grad(tf.stop_gradient(z))
        return lp, lambda dy: dy * grad

    return target_log_prob


def find_map(target, z0):
    """Start the chain at the posterior mode: L-BFGS on ``-target`` from the prior median.

    Far from the data the log-density is thousands of units below the mode (the
    solution is out of phase with the observations), where HMC with a step size
    sized for the posterior would accept nothing for a long time.
    """

    def neg(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = -target(z)
        return value, tape.gradient(value, z)

    res = tfp.optimizer.lbfgs_minimize(neg, initial_position=z0, max_iterations=100, tolerance=1e-8)
    return res.position, int(res.num_objective_evaluations)


def laplace_factor(prob, times, z_map):
    """Cholesky factor ``L`` of the Laplace covariance at the mode, ``(J^T J / noise^2 + I / s^2)^{-1}``.

    ``J = du/dz`` at the observation times comes from `sensode.forward_sensitivities`
    (Gauss--Newton: the likelihood's Hessian without its second-derivative term).
    The posterior is narrow (log-scale standard deviations of a few 1e-3) and its
    parameters strongly correlated, so plain HMC would need tiny steps; sampling
    ``w`` with ``z = z_map + L w`` makes it roughly isotropic with unit scale
    (a linear change of variables: the density of ``w`` needs only a constant Jacobian).
    """
    res = sensode.forward_sensitivities(prob.remake(p=tf.exp(z_map)), sensode.Tsit5(),
                                        saveat=tf.constant(times, tf.float64), rtol=1e-10, atol=1e-12)
    J = tf.reshape(res.du_dp, [-1, 4]) * tf.exp(z_map)[None, :]  # du/dz = du/dp * p
    n = tf.constant(NOISE.value, tf.float64)
    H = tf.transpose(J) @ J / n**2 + tf.eye(4, dtype=tf.float64) / PRIOR_SCALE.value**2
    return tf.linalg.cholesky(tf.linalg.inv(H))


def run_chain(target, state, step_size):
    step_size = tf.constant(step_size, tf.float64)
    if KERNEL.value == "hmc":
        inner = tfp.mcmc.HamiltonianMonteCarlo(target, step_size=step_size, num_leapfrog_steps=LEAPFROG.value)
    else:
        inner = tfp.mcmc.NoUTurnSampler(target, step_size=step_size, max_tree_depth=6)
    kernel = tfp.mcmc.SimpleStepSizeAdaptation(inner, num_adaptation_steps=int(0.8 * BURNIN.value))

    def trace(_, results):
        return results.inner_results.is_accepted, results.inner_results.accepted_results.step_size

    @tf.function(autograph=False)
    def sample():
        return tfp.mcmc.sample_chain(num_results=SAMPLES.value, num_burnin_steps=BURNIN.value,
                                     current_state=state, kernel=kernel, trace_fn=trace, seed=(SEED.value, 1))

    return sample()


def main(argv):
    del argv
    start = time.perf_counter()
    truth = models.lotka_volterra(p=TRUE_P, tspan=(0.0, T1.value))
    times = np.linspace(T1.value / POINTS.value, T1.value, POINTS.value)
    clean = sensode.solve(truth, saveat=tf.constant(times), rtol=1e-10, atol=1e-12).u.numpy()
    data = clean + NOISE.value * np.random.default_rng(SEED.value).normal(size=clean.shape)
    target = make_target(truth, times, data)

    z_prior = tf.constant(np.log(PRIOR_MEDIAN), tf.float64)
    t0 = time.perf_counter()
    lp0 = float(target(z_prior))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    z_init, map_evals = find_map(target, z_prior)
    map_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if PRECONDITION.value:
        L = laplace_factor(truth, times, z_init)

        def target_w(w):
            return target(z_init + tf.linalg.matvec(L, w))

        ws, (accepted, step_size) = run_chain(target_w, tf.zeros([4], tf.float64), 0.3)
        zs = z_init[None, :] + tf.linalg.matvec(L[None], ws)
    else:
        zs, (accepted, step_size) = run_chain(target, z_init, 1e-3)
    chain_s = time.perf_counter() - t0

    ps = np.exp(zs.numpy())  # [samples, 4]
    accepted = accepted.numpy()
    print(f"{KERNEL.value.upper()}: {BURNIN.value} burn-in + {SAMPLES.value} draws, {POINTS.value} observations "
          f"on (0, {T1.value:g}], noise sd {NOISE.value:g} (known), log-normal priors "
          f"median {PRIOR_MEDIAN.tolist()} scale {PRIOR_SCALE.value:g}")
    print(f"log-density {lp0:.1f} at the prior median, {float(target(z_init)):.1f} at the MAP start "
          f"({map_evals} L-BFGS evaluations, {map_s:.1f} s); target compile {compile_s:.1f} s, chain {chain_s:.1f} s")
    print(f"acceptance rate {accepted.mean():.2f} (target 0.75), adapted step size {float(step_size[-1]):.4g}")
    print(f"{'parameter':>20} {'truth':>7} {'mean':>8} {'sd':>7} {'5%':>8} {'95%':>8}  covered")
    for j, name in enumerate(NAMES):
        lo, hi = np.quantile(ps[:, j], [0.05, 0.95])
        print(f"{name:>20} {TRUE_P[j]:7.3f} {ps[:, j].mean():8.4f} {ps[:, j].std():7.4f} {lo:8.4f} {hi:8.4f}  "
              f"{'yes' if lo <= TRUE_P[j] <= hi else 'no'}")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, axes = plt.subplots(2, 4, figsize=(11, 4.5))
    for j, name in enumerate(NAMES):
        axes[0, j].plot(ps[:, j], lw=0.7)
        axes[0, j].axhline(TRUE_P[j], color="k", ls="--", lw=0.8)
        axes[0, j].set_title(name, fontsize=8)
        axes[1, j].hist(ps[:, j], bins=30)
        axes[1, j].axvline(TRUE_P[j], color="k", ls="--", lw=0.8)
    axes[0, 0].set_ylabel("trace")
    axes[1, 0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(PNG.value, dpi=120)
    print(f"wrote {PNG.value}")


if __name__ == "__main__":
    app.run(main)
