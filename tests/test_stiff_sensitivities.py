"""Gradients through stiff solves of Robertson's kinetics: every sensitivity algorithm.

Reference: SciPy ``solve_ivp(method="Radau")`` at rtol 1e-11 on the state
and its forward sensitivity equations (d u / d log k, `stiff_references`).
Split from `test_stiff.py` so each process compiles fewer XLA programs (the
test runner's memory bound is per file).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import solve_ivp

import sensode as sd
from stiff_references import SENS_REF, _sens_grad


@pytest.mark.parametrize("sensealg", [sd.ForwardSensitivity, sd.DiscreteAdjoint, sd.InterpolatingAdjoint,
                                      sd.QuadratureAdjoint])
def test_robertson_sensitivities_rodas5(sensealg):
    np.testing.assert_allclose(_sens_grad(sd.Rodas5(), sensealg()), SENS_REF, rtol=1e-5)


@pytest.mark.parametrize("sensealg", [sd.InterpolatingAdjoint(), sd.QuadratureAdjoint(), None],
                         ids=["InterpolatingAdjoint", "QuadratureAdjoint", "default"])
def test_robertson_sensitivities_rodas5_from_eager_code(sensealg):
    # The backward program of an eager call is compiled too: its LU must be the XLA one.
    # sensealg=None: the default with a stiff method (ForwardSensitivity here, chosen on demand).
    np.testing.assert_allclose(_sens_grad(sd.Rodas5(), sensealg, eager=True), SENS_REF, rtol=1e-5)


def test_robertson_sensitivities_kvaerno5_discrete():
    np.testing.assert_allclose(_sens_grad(sd.Kvaerno5(), sd.DiscreteAdjoint()), SENS_REF, rtol=1e-5)


def test_backsolve_on_stiff_problem_fails_loudly():
    g = _sens_grad(sd.Rodas5(), sd.BacksolveAdjoint())
    assert np.all(np.isnan(g)), g  # never a silently wrong gradient


def test_auto_robertson_discrete_adjoint_graph_mode():
    # Reverse mode through the per-step conditional and the non-inlined stiff branch. At rtol 1e-7:
    # at rtol 1e-9 the stiffness estimate misses Robertson's fast mode and Tsit5 runs out of steps
    # (docs/stiff.md, "Automatic switching").
    g = _sens_grad(sd.AutoTsit5Rodas5(), sd.DiscreteAdjoint(), rtol=1e-7, atol=1e-11)
    np.testing.assert_allclose(g, SENS_REF, rtol=1e-5)


def test_discrete_adjoint_under_xla_of_f_that_slices_and_concatenates(monkeypatch):
    # Reverse mode through the Jacobian under XLA: `f` built from slices and
    # tf.concat needs a third derivative of Slice (XlaDynamicUpdateSlice, given a
    # gradient by sensode) and, above `UNROLL_UNDER_XLA` states (lowered to 6
    # here to keep the program small), a Jacobian whose gradient compiles for a
    # slicing `f` (pfor's did not). Both failed to compile before (the first
    # at any size). Reference: the closed form of u' = -k u, blockwise.
    import tensorflow as tf

    from sensode.ode import linear

    monkeypatch.setattr(linear, "UNROLL_UNDER_XLA", 6)
    n, half, T = 20, 10, 0.5
    u0 = np.linspace(0.5, 1.5, n)
    k = np.array([1.0, 4.0])
    prob = sd.ODEProblem(lambda t, u, k: tf.concat([-k[0] * u[:half], -k[1] * u[half:]], axis=0),
                         tf.constant(u0), (0.0, T), tf.constant(k))

    @tf.function(jit_compile=True)
    def grad(k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            sol = sd.solve(prob.remake(p=k), sd.Rosenbrock23(), rtol=1e-8, atol=1e-10, sensealg=sd.DiscreteAdjoint())
            loss = tf.reduce_sum(sol.u[-1] ** 2)
        return tape.gradient(loss, k)

    exact = [np.sum(-2 * T * u0[:half] ** 2 * np.exp(-2 * k[0] * T)), np.sum(-2 * T * u0[half:] ** 2 * np.exp(-2 * k[1] * T))]
    np.testing.assert_allclose(grad(tf.constant(k)).numpy(), exact, rtol=1e-5)


def test_forward_sensitivity_rodas5_non_autonomous_against_scipy_differences():
    # Rodas5 needs d/dt of the whole (u, S) system; here the sensitivity part depends on t
    # (u' = -k u + sin(w t) [1, u_0]), so a wrong t-derivative of J S + df/dp shows.
    # Reference: central differences of SciPy Radau at rtol 1e-12.
    k, w = 50.0, 3.0

    def f(t, u, p):
        return -p[0] * u + tf.sin(p[1] * t) * tf.stack([tf.ones_like(u[0]), u[0]])

    def loss_np(q):
        sol = solve_ivp(lambda t, u: -q[0] * u + np.sin(q[1] * t) * np.array([1.0, u[0]]), (0.0, 2.0), [1.0, 0.5],
                        method="Radau", rtol=1e-12, atol=1e-14)
        return np.sum(sol.y[:, -1] ** 2)

    steps = (1e-4, 1e-5)
    want = [(loss_np([k + h * (i == 0), w + h * (i == 1)]) - loss_np([k - h * (i == 0), w - h * (i == 1)])) / (2 * h)
            for i, h in enumerate(steps)]
    p = tf.constant([k, w], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(p)
        prob = sd.ODEProblem(f, tf.constant([1.0, 0.5], tf.float64), (0.0, 2.0), p)
        sol = sd.solve(prob, sd.Rodas5(), sensealg=sd.ForwardSensitivity(), rtol=1e-10, atol=1e-12)
        loss = tf.reduce_sum(sol.u[-1] ** 2)
    np.testing.assert_allclose(tape.gradient(loss, p).numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("method,backward", [(sd.Kvaerno5(), None), (sd.Tsit5(), sd.Kvaerno5())],
                         ids=["Kvaerno5", "Tsit5-then-Kvaerno5"])
def test_interpolating_adjoint_with_kvaerno5_backward_converges(method, backward):
    # Kvaerno5's third stage sits at t + 1.23 h: on the backward solve's last step it lies
    # beyond t0, where the forward record has no step. A state frozen at t0 there gave dL/dk
    # a relative error of 1.2e-4 at rtol 1e-9 that no tolerance removed (the record is now
    # extrapolated). Closed form: u' = k u, L = <w, u(1)>, dL/dk = L.
    k, u0, w = 0.5, np.array([1.0, -2.0]), np.array([0.3, 0.7])

    @tf.function(jit_compile=True)
    def grad(u0, k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            prob = sd.ODEProblem(lambda t, u, p: p * u, u0, (0.0, 1.0), k)
            sol = sd.solve(prob, method, sensealg=sd.InterpolatingAdjoint(alg=backward), rtol=1e-9, atol=1e-11)
            loss = tf.reduce_sum(sol.u[-1] * w)
        return tape.gradient(loss, k)

    exact = w @ u0 * np.exp(k)
    np.testing.assert_allclose(grad(tf.constant(u0), tf.constant(k, tf.float64)).numpy(), exact, rtol=1e-6)
