"""Tests of `sensode.estimation.fit`.

Data come from SciPy (DOP853 at rtol = atol = 1e-12) or closed forms, never
from sensode; the noisy fit is checked against an independent Gauss--Newton
covariance built from SciPy's forward-sensitivity equations.
"""

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import estimation

from reference_problems import lotka_volterra_p_sensitivities

LV_TRUE = np.array([1.5, 1.0, 3.0, 1.0])
TIMES = np.linspace(0.2, 2.0, 10)


def lv_scipy(p, times=TIMES, u0=(1.0, 1.0)):
    """States ``[T, 2]`` and sensitivities ``[T, 2, 4]`` of Lotka--Volterra."""
    return lotka_volterra_p_sensitivities(times, u0, p)


def lv_guess():
    return sd.models.lotka_volterra(p=(1.3, 0.85, 2.7, 1.15), tspan=(0.0, 2.0))


def test_noise_free_fit_recovers_parameters():
    data, _ = lv_scipy(LV_TRUE)
    res = estimation.fit(lv_guess(), TIMES, data, positive=True, optimizer="lbfgs")
    np.testing.assert_allclose(res.theta, LV_TRUE, rtol=1e-3)
    assert res.loss < 1e-10 and res.converged
    assert res.names == ["p[0]", "p[1]", "p[2]", "p[3]"]
    assert res.loss_history[-1] <= res.loss_history[0]
    np.testing.assert_allclose(res.p.numpy(), res.theta)


def test_noisy_fit_within_three_standard_errors():
    clean, S = lv_scipy(LV_TRUE)
    sigma = 0.02
    data = clean + sigma * np.random.default_rng(1).normal(size=clean.shape)
    res = estimation.fit(lv_guess(), TIMES, data, positive=[True, True, True, True],
                         optimizer=("adam", "lbfgs"), adam_steps=10, learning_rate=0.02,
                         sensealg=sd.InterpolatingAdjoint())
    assert np.all(np.abs(res.theta - LV_TRUE) <= 3 * res.standard_errors), (res.theta, res.standard_errors)
    # Independent check of the reported standard errors: s^2 (J^T J)^-1 with J from SciPy at the estimate.
    pred, S_hat = lv_scipy(res.theta)
    r = (pred - data).ravel()
    J = S_hat.reshape(-1, 4)
    s2 = r @ r / (r.size - 4)
    np.testing.assert_allclose(res.sigma2, s2, rtol=1e-4)
    np.testing.assert_allclose(res.standard_errors, np.sqrt(np.diag(s2 * np.linalg.inv(J.T @ J))), rtol=1e-3)
    assert len(res.loss_history) > 10


def blowup_problem(p):
    """``u' = p u^2``, ``u(0) = 1``: ``u(t) = 1 / (1 - p t)``, infinite at ``t = 1 / p``."""
    return sd.ODEProblem(lambda t, u, p: p * u * u, tf.constant([1.0], tf.float64), (0.0, 1.0),
                         tf.constant(p, tf.float64))


def test_failing_trial_gets_infinite_loss_not_an_exception():
    times = np.linspace(0.25, 1.0, 4)
    data = (1.0 / (1.0 - 0.5 * times))[:, None]
    obj = estimation.Objective(blowup_problem(0.3), times, data, observe=None, loss=None, fit_u0=False,
                               positive=False, positive_u0=False, mask_nan=False, alg=sd.Tsit5(),
                               sensealg=None, rtol=1e-8, atol=1e-10, max_steps=500, jit_compile=False)
    value, grad, failed = obj(tf.constant([5.0], tf.float64))  # blows up at t = 0.2
    assert bool(failed) and np.isinf(float(value)) and float(grad[0]) == 0.0
    value, grad, failed = obj(tf.constant([0.5], tf.float64))
    assert not bool(failed) and float(value) < 1e-12
    # From p = 0.3 the first L-BFGS trial overshoots into the blow-up; the fit still converges.
    res = estimation.fit(blowup_problem(0.3), times, data, optimizer="lbfgs", max_steps=500)
    assert res.failed_trials >= 1 and np.isinf(res.loss_history).any()
    np.testing.assert_allclose(res.theta, [0.5], rtol=1e-5)


def test_nan_observations_raise_or_are_masked():
    k = 0.7
    times = np.linspace(0.2, 2.0, 6)
    data = np.exp(-k * times)[:, None] * np.array([[1.0, -2.0]])
    data[2, 1] = np.nan
    prob = sd.ODEProblem(lambda t, u, p: -p * u, tf.constant([1.0, -2.0], tf.float64), (0.0, 2.0),
                         tf.constant(0.4, tf.float64))
    with pytest.raises(ValueError, match=r"1 NaN observation\(s\) \(first at index \(2, 1\)\).*mask_nan=True"):
        estimation.fit(prob, times, data)
    res = estimation.fit(prob, times, data, mask_nan=True, positive=True)
    assert res.n_obs == data.size - 1 and res.names == ["p"]
    np.testing.assert_allclose(res.theta, [k], rtol=1e-6)


def test_bad_inputs():
    prob = sd.models.exponential_decay()
    with pytest.raises(ValueError, match="len\\(times\\)"):
        estimation.fit(prob, [0.5, 1.0], np.ones((3, 1)))
    with pytest.raises(ValueError, match="> 0"):
        estimation.fit(prob.remake(p=tf.constant(-1.0, tf.float64)), [0.5, 1.0], np.ones((2, 1)), positive=True)
