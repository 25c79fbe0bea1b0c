"""Gradients of ODE solves by every sensitivity algorithm, against independent references.

References never come from sensode: the matrix exponential and its Fréchet
derivative (`scipy.linalg.expm_frechet`) for ``u' = A u``, closed forms for
exponential decay, and SciPy's DOP853 at rtol = atol = 1e-12 integrating the
forward sensitivity equations with hand-written Jacobians for Lotka--Volterra.
`DiscreteAdjoint` is also checked against central finite differences of the
solver's own output (fixed-step RK4, so the output is smooth in the inputs).

Cost: accuracy checks run under ``tf.function(jit_compile=True)`` (one compile
per algorithm and problem, shared between tests through ``functools.lru_cache``);
eager and plain ``tf.function`` runs use tiny problems.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import sensode as sd

from reference_problems import (
    DECAY_K,
    DECAY_U0,
    DECAY_W,
    LINEAR_A,
    LINEAR_U0,
    LV_P,
    LV_U0,
    SENSEALGS,
    assert_close,
    in_mode,
    lv_rhs_numpy,
    rel_err,
)

F64 = tf.float64
F32 = tf.float32

ALL = list(SENSEALGS)
CONTINUOUS = ["backsolve", "interpolating", "quadrature"]  # what adjoint_sensitivities takes

TIGHT = dict(rtol=1e-10, atol=1e-12)


# Measured relative errors (printed; run with -s to see them).
class _Measured(dict):
    def __setitem__(self, key, errs):
        super().__setitem__(key, errs)
        text = ", ".join(f"{q} {e:.1e}" for q, e in errs.items()) if isinstance(errs, dict) else f"{errs:.1e}"
        print(f"\nmeasured {'/'.join(key)}: {text}")


MEASURED = _Measured()


# ====================================================================================
# Linear ODE u' = A u: exact gradients from the matrix exponential
# ====================================================================================
LIN_T = 1.5
LIN_TS = np.linspace(0.1, LIN_T, 15)  # the last save time is t1
_rng = np.random.default_rng(3)
LIN_W_MANY = _rng.normal(size=(len(LIN_TS), 3))
LIN_W_FINAL = np.array([0.7, -1.3, 0.4])


def _linear_exact(weights):
    """Exact gradients of ``L = sum_i <W_i, u(t_i)>`` over ``LIN_TS`` for ``u' = A u``."""
    A, u0, n = LINEAR_A, LINEAR_U0, LINEAR_A.shape[0]
    du0 = np.zeros(n)
    dA = np.zeros((n, n))
    dts = np.zeros(len(LIN_TS))
    for i, (t, w) in enumerate(zip(LIN_TS, weights)):
        if not np.any(w):
            continue
        E = scipy.linalg.expm(A * t)
        du0 += E.T @ w
        for a in range(n):
            for b in range(n):
                Eab = np.zeros((n, n))
                Eab[a, b] = 1.0
                # d expm(A t) / dA_ab = Frechet(A t, E_ab t)
                dA[a, b] += w @ scipy.linalg.expm_frechet(A * t, Eab * t, compute_expm=False) @ u0
        dts[i] = w @ A @ E @ u0
    # Moving t0 shifts the whole trajectory: u(t) = expm(A (t - t0)) u0.
    return {"u0": du0, "A": dA, "t0": -np.sum(dts), "t1": dts[-1], "ts": dts[:-1]}


@functools.lru_cache(maxsize=None)
def linear_reference():
    w_final = np.zeros_like(LIN_W_MANY)
    w_final[-1] = LIN_W_FINAL
    return {"final": _linear_exact(w_final), "many": _linear_exact(LIN_W_MANY)}


@functools.lru_cache(maxsize=None)
def linear_gradients(name):
    """Both losses' gradients from one XLA-compiled solve with ``SENSEALGS[name]``."""
    sensealg = SENSEALGS[name]
    base = sd.models.linear(A=LINEAR_A, u0=LINEAR_U0, tspan=(0.0, LIN_T))

    @tf.function(jit_compile=True)
    def run(u0, A, t0, t1, ts_inner):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([u0, A, t0, t1, ts_inner])
            prob = sd.ODEProblem(base.f, u0, (t0, t1), A)
            # The last save time is t1 itself, so dL/dt1 arrives through saveat.
            ts = tf.concat([ts_inner, t1[None]], 0)
            sol = sd.solve(prob, sd.Tsit5(), saveat=ts, sensealg=sensealg, **TIGHT)
            losses = {
                "final": tf.reduce_sum(sol.u[-1] * LIN_W_FINAL),
                "many": tf.reduce_sum(sol.u * LIN_W_MANY),
            }
        out = {}
        for key, loss in losses.items():
            g = tape.gradient(loss, [u0, A, t0, t1, ts_inner])
            out[key] = dict(zip(["u0", "A", "t0", "t1", "ts"], g))
        return out

    res = run(tf.constant(LINEAR_U0, F64), tf.constant(LINEAR_A, F64), tf.constant(0.0, F64), tf.constant(LIN_T, F64),
              tf.constant(LIN_TS[:-1], F64))
    return {k: {q: v.numpy() for q, v in d.items()} for k, d in res.items()}


@pytest.mark.parametrize("loss", ["final", "many"])
@pytest.mark.parametrize("name", ALL)
def test_linear_exact_gradients(name, loss):
    got = linear_gradients(name)[loss]
    ref = linear_reference()[loss]
    errs = {}
    for q in ("u0", "A", "t0", "t1"):
        errs[q] = assert_close(f"{name}/{loss} dL/d{q}", got[q], ref[q], 1e-6)
    if loss == "many":
        errs["ts"] = assert_close(f"{name}/{loss} dL/dts", got["ts"], ref["ts"], 1e-6)
    else:  # no loss term at the interior save times
        np.testing.assert_allclose(got["ts"], 0.0, atol=1e-12)
    MEASURED[("linear", name, loss)] = errs


def test_checkpointed_discrete_matches_plain_discrete():
    # Different discretisations (the segmented solve restarts at the cuts), so
    # they agree to the solver tolerance, not to round-off.
    plain, ckpt = linear_gradients("discrete"), linear_gradients("discrete_ckpt")
    for loss in ("final", "many"):
        for q in ("u0", "A", "t0", "t1"):
            assert rel_err(ckpt[loss][q], plain[loss][q]) < 1e-8, (loss, q)


# ====================================================================================
# Exponential decay u' = -k u: closed forms, every algorithm in every execution mode
# ====================================================================================
DECAY_T0, DECAY_T1 = 0.2, 1.2
DECAY_V = np.array([0.4, 0.9])  # weight on u(t0)


def decay_exact():
    """``L = <V, u(t0)> + <W, u(t1)>`` with ``u(t1) = u0 exp(-k (t1 - t0))``."""
    tau = DECAY_T1 - DECAY_T0
    e = np.exp(-DECAY_K * tau)
    end = DECAY_W @ DECAY_U0 * e
    return {"u0": DECAY_V + DECAY_W * e, "k": -tau * end, "t0": DECAY_K * end, "t1": -DECAY_K * end}


# XLA: every algorithm is compiled with jit_compile=True by the linear and
# Lotka--Volterra tests below (dL/dt0 included); compiling the decay problem as
# well would double the cost of this file.
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", ALL)
def test_decay_closed_form(name, mode):
    sensealg = SENSEALGS[name]
    decay = sd.models.exponential_decay()

    def grads(u0, k, t0, t1):
        with tf.GradientTape() as tape:
            tape.watch([u0, k, t0, t1])
            prob = sd.ODEProblem(decay.f, u0, (t0, t1), k)
            sol = sd.solve(prob, sd.Tsit5(), sensealg=sensealg, **TIGHT)  # saveat=None: [t0, t1]
            loss = tf.reduce_sum(sol.u[0] * DECAY_V) + tf.reduce_sum(sol.u[1] * DECAY_W)
        return tape.gradient(loss, [u0, k, t0, t1])

    got = in_mode(mode, grads)(
        tf.constant(DECAY_U0, F64), tf.constant(DECAY_K, F64), tf.constant(DECAY_T0, F64), tf.constant(DECAY_T1, F64)
    )
    ref = decay_exact()
    for q, g in zip(["u0", "k", "t0", "t1"], got):
        assert_close(f"{name}/{mode} dL/d{q}", g.numpy(), ref[q], 1e-8)


@pytest.mark.parametrize("name", ALL)
def test_save_time_gradient_at_span_ends(name):
    # saveat given explicitly as [t0, mid, t1] (separate tensors from tspan):
    # dL/dts_i = <W_i, f(u(ts_i))> = -k <W_i, u(ts_i)> at every save time.
    decay = sd.models.exponential_decay()
    ts = tf.constant([DECAY_T0, 0.7, DECAY_T1], F64)
    w = np.array([[1.0, 0.5], [-0.3, 0.2], [0.6, -1.0]])
    with tf.GradientTape() as tape:
        tape.watch(ts)
        prob = sd.ODEProblem(decay.f, tf.constant(DECAY_U0, F64), (DECAY_T0, DECAY_T1), tf.constant(DECAY_K, F64))
        sol = sd.solve(prob, sd.Tsit5(), saveat=ts, sensealg=SENSEALGS[name], rtol=1e-9, atol=1e-11)
        loss = tf.reduce_sum(sol.u * w)
    u_exact = np.exp(-DECAY_K * (ts.numpy() - DECAY_T0))[:, None] * DECAY_U0
    assert_close(f"{name} dL/dts", tape.gradient(loss, ts).numpy(), -DECAY_K * np.sum(w * u_exact, axis=1), 1e-7)


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
    got, ref = lv_gradients(name), lv_reference()
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
