"""Gradients on Lotka--Volterra by every sensitivity algorithm, against independent references.

References never come from sensode: SciPy's DOP853 at rtol = atol = 1e-12
integrating the forward sensitivity equations with hand-written Jacobians.
`DiscreteAdjoint` is also checked against central finite differences of the
solver's own output (fixed-step RK4, so the output is smooth in the inputs).
Split from `test_sensitivities.py`; accuracy checks run under
``tf.function(jit_compile=True)``, one compile per algorithm shared through
``functools.lru_cache``. Also here: a second derivative through nested tapes
(exponential decay, closed form).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.integrate
import tensorflow as tf

import sensode as sd

from reference_problems import LV_P, LV_U0, SENSEALGS, Measured, assert_close, lv_rhs_numpy, rel_err

F64 = tf.float64
CONTINUOUS = ["backsolve", "interpolating", "quadrature"]  # what adjoint_sensitivities takes
TIGHT = dict(rtol=1e-10, atol=1e-12)
MEASURED = Measured()  # measured relative errors, printed (run with -s to see them)


# ====================================================================================
# Lotka--Volterra: SciPy forward-sensitivity reference
# ====================================================================================
LV_T = 5.0
LV_TS = np.linspace(0.5, LV_T, 10)  # the last save time is t1
LV_W = np.random.default_rng(7).normal(size=(len(LV_TS), 2))


def _lv_sens_rhs(t, z, a, b, c, d):
    """State, ``S = du/d(u0, p)`` ``[2, 6]`` and the running integrals of
    ``sum(u)`` and ``sum_i S_i``."""
    x, y = z[0], z[1]
    S = z[2:14].reshape(2, 6)
    J = np.array([[a - b * y, -b * x], [d * y, -c + d * x]])
    fp = np.zeros((2, 6))
    fp[:, 2:] = [[x, -x * y, 0.0, 0.0], [0.0, 0.0, -y, x * y]]
    dS = J @ S + fp
    return np.concatenate([lv_rhs_numpy(t, (x, y), a, b, c, d), dS.ravel(), [x + y], S.sum(axis=0)])


@functools.lru_cache(maxsize=None)
def lv_reference():
    """``u``, ``S`` at ``LV_TS`` and ``int_0^T sum(u)``, ``int_0^T sum_i S_i`` (DOP853, 1e-12)."""
    S0 = np.zeros((2, 6))
    S0[:, :2] = np.eye(2)
    z0 = np.concatenate([LV_U0, S0.ravel(), np.zeros(7)])
    res = scipy.integrate.solve_ivp(
        _lv_sens_rhs, (0.0, LV_T), z0, method="DOP853", rtol=1e-12, atol=1e-12, args=LV_P, t_eval=LV_TS
    )
    assert res.success, res.message
    z = res.y.T
    u = z[:, :2]
    S = z[:, 2:14].reshape(-1, 2, 6)
    a, b, c, d = LV_P
    f = np.array([lv_rhs_numpy(0.0, ui, a, b, c, d) for ui in u])
    grad = np.einsum("ti,tij->j", LV_W, S)
    return {
        "u": u,
        "du_du0": S[:, :, :2],
        "du_dp": S[:, :, 2:],
        "u0": grad[:2],
        "p": grad[2:],
        "ts": np.sum(LV_W * f, axis=1),
        "int_sum_u": z[-1, 14],
        "int_grad": z[-1, 15:],
    }


_LV_F = sd.models.lotka_volterra().f


def _lv_prob(u0, p, t1=LV_T):
    return sd.ODEProblem(_LV_F, u0, (tf.constant(0.0, u0.dtype), t1), p)


@functools.lru_cache(maxsize=None)
def lv_gradients(name):
    sensealg = SENSEALGS[name]

    @tf.function(jit_compile=True)
    def run(u0, p, ts):
        with tf.GradientTape() as tape:
            tape.watch([u0, p, ts])
            sol = sd.solve(_lv_prob(u0, p), sd.Tsit5(), saveat=ts, sensealg=sensealg, **TIGHT)
            loss = tf.reduce_sum(sol.u * LV_W)
        return dict(zip(["u0", "p", "ts"], tape.gradient(loss, [u0, p, ts])))

    res = run(tf.constant(LV_U0, F64), tf.constant(LV_P, F64), tf.constant(LV_TS, F64))
    return {k: v.numpy() for k, v in res.items()}


# sensealg=None is ForwardSensitivity here (see test_default_sensealg_choices);
# the checkpointed variants are checked against exact gradients on the linear
# problem (and DiscreteAdjoint(checkpoints) against finite differences below).
LV_ALGS = ["forward", "discrete", "backsolve", "interpolating", "quadrature"]


@pytest.mark.parametrize("name", LV_ALGS)
def test_lotka_volterra_against_scipy(name):
    got, ref = dict(lv_gradients(name)), lv_reference()  # a copy: the cached dict is shared with other tests
    got["ts"], ref = got["ts"][:-1], dict(ref, ts=ref["ts"][:-1])  # the last one is t1: see the span-ends test
    MEASURED[("lv", name)] = {q: assert_close(f"{name} dL/d{q}", got[q], ref[q], 1e-6) for q in ("u0", "p", "ts")}


@pytest.mark.parametrize("name", LV_ALGS[1:])
def test_lotka_volterra_algorithms_agree(name):
    got, fwd = lv_gradients(name), lv_gradients("forward")
    for q in ("u0", "p"):
        assert rel_err(got[q], fwd[q]) < 1e-7, q
    assert rel_err(got["ts"][:-1], fwd["ts"][:-1]) < 1e-7


def test_forward_sensitivities_lotka_volterra():
    @tf.function(jit_compile=True)
    def run(u0, p):
        res = sd.forward_sensitivities(_lv_prob(u0, p), sd.Tsit5(), saveat=LV_TS, **TIGHT)
        return res.u, res.du_du0, res.du_dp, res.status

    u, du_du0, du_dp, status = run(tf.constant(LV_U0, F64), tf.constant(LV_P, F64))
    ref = lv_reference()
    assert int(status) == 0
    assert du_du0.shape == (len(LV_TS), 2, 2) and du_dp.shape == (len(LV_TS), 2, 4)
    assert_close("u", u.numpy(), ref["u"], 1e-7)
    assert_close("du_du0", du_du0.numpy(), ref["du_du0"], 1e-7)
    assert_close("du_dp", du_dp.numpy(), ref["du_dp"], 1e-7)


@functools.lru_cache(maxsize=None)
def lv_adjoint_sensitivities(name):
    """`adjoint_sensitivities` for ``L = sum_i <W_i, u(t_i)> + int_0^T sum(u) dt``."""
    sensealg = SENSEALGS[name]

    def running(t, u, p):
        return tf.reduce_sum(u)

    @tf.function(jit_compile=True)
    def run(u0, p):
        sol = sd.solve(_lv_prob(u0, p), sd.Tsit5(), saveat=LV_TS, **TIGHT)
        r = sd.adjoint_sensitivities(sol, sensealg=sensealg, dgdu_discrete=LV_W, g=running, **TIGHT)
        return dict(u0=r.du0, p=r.dp, t0=r.dt0, t1=r.dt1, ts=r.dts, status=r.status, nfe=r.stats["nfe"])

    return {k: v.numpy() for k, v in run(tf.constant(LV_U0, F64), tf.constant(LV_P, F64)).items()}


def _lv_f(u):
    return np.array(lv_rhs_numpy(0.0, u, *LV_P))


@pytest.mark.parametrize("name", CONTINUOUS)
def test_adjoint_sensitivities_discrete_and_running_cost(name):
    # One backward solve per algorithm for both parts of the loss (each part
    # has its own exact reference; a missing part shows in every component).
    # Running cost int_0^T sum(u) dt: dL/d(u0, p) = int_0^T sum_i S_i dt,
    # integrated alongside the SciPy reference.
    got = lv_adjoint_sensitivities(name)
    ref = lv_reference()
    assert got["status"] == 0 and got["nfe"] > 0
    du0 = ref["u0"] + ref["int_grad"][:2]
    errs = {
        "u0": assert_close(f"{name} dL/du0", got["u0"], du0, 1e-6),
        "p": assert_close(f"{name} dL/dp", got["p"], ref["p"] + ref["int_grad"][2:], 1e-6),
        # dL/dts_i = <W_i, f(u_i)>: the running cost adds nothing at interior save times.
        "ts": assert_close(f"{name} dL/dts", got["ts"], ref["ts"], 1e-6),
        # The last save time is t1, and the running cost's end moves with t1: + g(t1).
        "t1": assert_close(f"{name} dL/dt1", got["t1"], ref["ts"][-1] + np.sum(ref["u"][-1]), 1e-6),
        # No save time at t0: moving t0 shifts the trajectory and the running cost's start.
        "t0": assert_close(f"{name} dL/dt0", got["t0"], -np.sum(LV_U0) - du0 @ _lv_f(np.array(LV_U0)), 1e-6),
    }
    MEASURED[("adjoint_sensitivities", name)] = errs


# ------------------------------------------------------------------------------------
# Finite differences of the solver output (fixed-step RK4: smooth in the inputs)
# ------------------------------------------------------------------------------------
FD_T = 3.1
FD_TS = np.linspace(0.31, FD_T, 10)
FD_DT = 0.05


@pytest.mark.parametrize("name", ["discrete", "discrete_ckpt"])
def test_fixed_step_gradient_matches_finite_differences(name):
    # DiscreteAdjoint is the exact derivative of the computed numbers; with
    # checkpoints, of the segmented solve's numbers (whose cuts at T/3, 2T/3 are
    # off the dt grid).
    sensealg = SENSEALGS[name]

    def loss_of(theta):
        prob = _lv_prob(theta[:2], theta[2:], FD_T)
        sol = sd.solve(prob, sd.RK4(), dt=FD_DT, saveat=FD_TS, sensealg=sensealg)
        return tf.reduce_sum(sol.u * LV_W)

    @tf.function(jit_compile=True)
    def value_and_grad(theta):  # one compile serves both
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = loss_of(theta)
        return loss, tape.gradient(loss, theta)

    def value(theta):
        return value_and_grad(tf.constant(theta))[0].numpy()

    theta = np.array(LV_U0 + LV_P)
    h = 1e-5
    fd = np.zeros_like(theta)
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = h
        fd[j] = (value(theta + e) - value(theta - e)) / (2 * h)
    grad = value_and_grad(tf.constant(theta))[1].numpy()
    MEASURED[("fd", name)] = assert_close(f"{name} vs central differences", grad, fd, 1e-7)


@pytest.mark.parametrize("sensealg", [sd.ForwardSensitivity(), sd.DiscreteAdjoint(), sd.InterpolatingAdjoint()],
                         ids=lambda a: type(a).__name__)
def test_second_derivative_through_nested_tapes(sensealg):
    # u' = -k u, L = u(1)^2 = exp(-2k): dL/dk = -2 exp(-2k), d2L/dk2 = 4 exp(-2k). The outer tape
    # differentiates the custom gradient, whose saved forward data (e.g. the forward sensitivities)
    # depend on k: the forward pass must stay recorded when a tape can take a second derivative.
    prob = sd.ODEProblem(lambda t, u, p: -p * u, tf.constant([1.0], F64), (0.0, 1.0), tf.constant([0.7], F64))

    @tf.function
    def grads(k):
        with tf.GradientTape() as outer:
            outer.watch(k)
            with tf.GradientTape() as inner:
                inner.watch(k)
                sol = sd.solve(prob.remake(p=k), sd.Tsit5(), rtol=1e-10, atol=1e-12, sensealg=sensealg)
                loss = tf.reduce_sum(sol.u[-1] ** 2)
            g = inner.gradient(loss, k)
        return g, outer.gradient(g, k)

    g, h = grads(tf.constant([0.7], F64))
    np.testing.assert_allclose(g.numpy(), [-2.0 * np.exp(-1.4)], rtol=1e-7)
    np.testing.assert_allclose(h.numpy(), [4.0 * np.exp(-1.4)], rtol=1e-6)
