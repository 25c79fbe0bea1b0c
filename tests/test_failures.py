"""The failure rule for ODE solves, checked for every sensitivity algorithm and execution mode.

A failed solve yields a non-zero status, NaN at every save point it did not
reach, NaN in every gradient, and in eager mode (``throw=True``) a
`SolverError` naming the failing pass. Never ``0.0``, never a finite gradient
of a failed solve. Inputs that can only be checked at run time (symbolic
``saveat``) give `Status.INVALID_INPUT` and NaN, never a wrong answer.

References: the values a failed solve must produce are fixed by the rule;
the successful parts are checked against closed forms (exponential decay)
and an independent NumPy Euler loop (checkpointing must not change a
fixed-step solution).
"""

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from reference_problems import SENSEALGS, decay_exact, decay_problem, lv_problem

F64 = tf.float64

ALGS = SENSEALGS
TS = [0.0, 0.5, 1.0, 1.5, 2.0]


def _loss_and_grads(alg, max_steps, saveat, mode):
    """Solve exponential decay (``throw=False``); returns u, status, dL/dp, dL/du0."""
    prob = decay_problem()

    def run(u0, p, ts):
        with tf.GradientTape() as tape:
            tape.watch([u0, p])
            sol = sd.solve(prob.remake(u0=u0, p=p), sd.Tsit5(), saveat=ts, rtol=1e-8, atol=1e-10,
                           max_steps=max_steps, sensealg=alg, throw=False)
            loss = tf.reduce_sum(tf.where(tf.math.is_nan(sol.u), tf.zeros_like(sol.u), sol.u) ** 2)
        dp, du0 = tape.gradient(loss, [p, u0])
        return sol.u, sol.status, dp, du0

    if mode == "function":
        run = tf.function(run)
    elif mode == "xla":
        run = tf.function(run, jit_compile=True)
    return run(prob.u0, prob.p, tf.constant(saveat, F64))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("name", list(ALGS))
def test_failed_solve_gives_nan_everywhere(name, mode):
    # max_steps=3 cannot reach t = 2 at rtol 1e-8: MAX_STEPS. The loss masks the
    # NaN rows to zero on purpose: the gradient must still be NaN.
    u, status, dp, du0 = _loss_and_grads(ALGS[name], 3, TS, mode)
    assert int(status) == sd.Status.MAX_STEPS
    u = u.numpy()
    np.testing.assert_allclose(u[0], decay_exact([0.0])[0], rtol=1e-12)  # t0 is reached
    assert np.isnan(u[-1]).all(), "the unreached end must be NaN, not 0"
    assert np.isnan(dp.numpy()).all() and np.isnan(du0.numpy()).all(), (dp, du0)


@pytest.mark.parametrize("name", ["discrete", "interpolating", "forward"])
def test_successful_solve_unaffected_by_the_rule(name):
    u, status, dp, _ = _loss_and_grads(ALGS[name], 1000, TS, "xla")
    assert int(status) == 0
    np.testing.assert_allclose(u.numpy(), decay_exact(TS), rtol=1e-7)
    # L = sum u^2 = sum_i |u0|^2 exp(-2 k t_i): dL/dk = -2 sum_i t_i |u0|^2 exp(-2 k t_i).
    k, n2 = 0.7, 5.0
    exact = -2.0 * sum(t * n2 * np.exp(-2 * k * t) for t in TS)
    np.testing.assert_allclose(float(dp), exact, rtol=1e-6)


@pytest.mark.parametrize("name", ["discrete", "backsolve", "interpolating", "forward"])
def test_eager_failure_raises_naming_the_forward_pass(name):
    prob = decay_problem()
    with pytest.raises(sd.SolverError, match="solve with .*step limit"):
        with tf.GradientTape() as tape:
            tape.watch(prob.p)
            sd.solve(prob, sd.Tsit5(), rtol=1e-8, atol=1e-10, max_steps=3, sensealg=ALGS[name])


@pytest.mark.parametrize("name", ["interpolating", "quadrature", "discrete", "forward", "default"])
@pytest.mark.parametrize("saveat", [[0.0, 1.5, 0.5, 2.0], [0.0, 1.0, 3.0]], ids=["unsorted", "outside"])
def test_symbolic_saveat_checked_at_run_time(name, saveat):
    u, status, dp, du0 = _loss_and_grads(ALGS[name], 1000, saveat, "function")
    assert int(status) == sd.Status.INVALID_INPUT
    assert np.isnan(u.numpy()).all() and np.isnan(dp.numpy()).all() and np.isnan(du0.numpy()).all()


def test_symbolic_saveat_valid_passes():
    u, status, _, _ = _loss_and_grads(ALGS["interpolating"], 1000, TS, "function")
    assert int(status) == 0
    np.testing.assert_allclose(u.numpy(), decay_exact(TS), rtol=1e-7)


def _euler_lv(dt=0.1, t1=1.0):
    """Independent explicit Euler on Lotka--Volterra (NumPy)."""
    a, b, c, d = 1.5, 1.0, 3.0, 1.0
    x, y = 1.0, 1.0
    for _ in range(int(round(t1 / dt))):
        x, y = x + dt * (a * x - b * x * y), y + dt * (-c * y + d * x * y)
    return np.array([x, y])


@pytest.mark.parametrize("alg", [sd.DiscreteAdjoint(checkpoints=3), sd.InterpolatingAdjoint(checkpoints=3),
                                 sd.DiscreteAdjoint(), None], ids=["discrete3", "interp3", "discrete", "default"])
def test_checkpointing_never_changes_a_fixed_step_solution(alg):
    prob = lv_problem(tspan=(0.0, 1.0))
    with tf.GradientTape() as tape:
        tape.watch(prob.p)
        sol = sd.solve(prob, sd.Euler(), dt=0.1, sensealg=alg)
        loss = tf.reduce_sum(sol.u[-1])
    np.testing.assert_allclose(sol.u[-1].numpy(), _euler_lv(), rtol=1e-12)
    np.testing.assert_allclose(sol.u[-1].numpy(), [2.64221, 0.19742], atol=1e-5)
    assert np.all(np.isfinite(tape.gradient(loss, prob.p).numpy()))


def test_blow_up_reports_status_and_nan():
    # u' = u^2, u(0) = 1 blows up at t = 1: the solve cannot pass it.
    prob = sd.ODEProblem(lambda t, u, p: p * u ** 2, tf.constant([1.0], F64), (0.0, 2.0), tf.constant(1.0, F64))
    with tf.GradientTape() as tape:
        tape.watch(prob.p)
        sol = sd.solve(prob, sd.Tsit5(), saveat=tf.constant([0.0, 0.5, 1.5], F64), throw=False,
                       sensealg=sd.DiscreteAdjoint())
        loss = tf.reduce_sum(sol.u[:2])
    assert int(sol.status) in (sd.Status.DT_MIN, sd.Status.NONFINITE, sd.Status.MAX_STEPS)
    np.testing.assert_allclose(sol.u[1].numpy(), [2.0], rtol=2e-3)  # 1 / (1 - t) at t = 0.5 (default rtol 1e-3)
    assert np.isnan(sol.u[2].numpy()).all()
    assert np.isnan(tape.gradient(loss, prob.p).numpy())
