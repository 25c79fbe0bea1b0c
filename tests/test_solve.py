"""`solve` and `odeint`: accuracy against independent references, execution
modes, dtypes, batching, backwards integration, save points, statistics,
retracing and adaptive-step efficiency."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd

from reference_problems import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    DECAY_K,
    DECAY_U0,
    FIXED_METHODS,
    LINEAR_A,
    LINEAR_U0,
    decay_exact,
    decay_problem,
    linear_exact,
    linear_problem,
    linear_rhs,
    lotka_volterra_reference,
    lv_problem,
    scipy_rk45_nfev,
)

F64 = tf.float64
name_of = lambda m: m.__name__  # noqa: E731

# --- accuracy at tight tolerances (XLA) ---------------------------------------------

ACC_TIMES = tuple(np.linspace(0.0, 10.0, 11))
# (rtol, atol, allowed max abs error). BS3 is third order: at rtol 1e-10 it
# needs more than 10^4 steps on Lotka--Volterra, so it runs at 1e-8.
ACC_TOLERANCES = {
    "BS3": (1e-8, 1e-10, 2e-6),
    "DP5": (1e-10, 1e-12, 5e-9),
    "Tsit5": (1e-10, 1e-12, 5e-9),
    "DP8": (1e-10, 1e-12, 5e-9),
}
ACC_PROBLEMS = {
    "decay": (lambda: decay_problem(tspan=(0.0, 10.0)), lambda ts: decay_exact(ts)),
    "linear": (lambda: linear_problem(tspan=(0.0, 10.0)), lambda ts: linear_exact(ts)),
    "lotka_volterra": (lv_problem, lambda ts: lotka_volterra_reference(tuple(ts))),
}


@functools.lru_cache(maxsize=None)
def _tight_solutions(method):
    """One compiled function per method solving every accuracy problem."""
    rtol, atol, _ = ACC_TOLERANCES[method.__name__]
    ts = tf.constant(ACC_TIMES, F64)

    @tf.function(jit_compile=True)
    def run():
        out = {}
        for name, (make, _) in ACC_PROBLEMS.items():
            sol = sd.solve(make(), method(), saveat=ts, rtol=rtol, atol=atol, max_steps=20000)
            out[name] = (sol.u, sol.status)
        return out

    return {k: (u.numpy(), int(s)) for k, (u, s) in run().items()}


@pytest.mark.parametrize("problem", sorted(ACC_PROBLEMS))
@pytest.mark.parametrize("method", ADAPTIVE_METHODS, ids=name_of)
def test_accuracy_against_reference(method, problem):
    u, status = _tight_solutions(method)[problem]
    assert status == sd.Status.SUCCESS
    exact = ACC_PROBLEMS[problem][1](np.asarray(ACC_TIMES))
    tol = ACC_TOLERANCES[method.__name__][2]
    err = np.max(np.abs(u - exact))
    assert err < tol, f"{method.__name__} on {problem}: max error {err:.2e}"


def test_tighter_tolerance_gives_smaller_error():
    # The tolerance is honoured, not only met by accident at one setting.
    ts = tf.constant([0.0, 5.0, 10.0], F64)
    exact = lotka_volterra_reference((0.0, 5.0, 10.0))
    errs = []
    for rtol in (1e-4, 1e-7):
        sol = sd.solve(lv_problem(), sd.Tsit5(), saveat=ts, rtol=rtol, atol=rtol * 1e-2)
        errs.append(np.max(np.abs(sol.u.numpy() - exact)))
    assert errs[1] < errs[0] / 100, errs
    assert errs[1] < 1e-5, errs


@pytest.mark.parametrize("method", FIXED_METHODS, ids=name_of)
def test_fixed_step_accuracy_on_linear_system(method):
    order = method().order
    dt = {1: 1e-3, 2: 1e-2, 4: 0.05}[order]
    with_dt = {1: 5e-3, 2: 1e-4, 4: 1e-5}[order]  # about C dt^order
    # tf.function: the Euler solve takes 2000 steps.
    run = tf.function(lambda: sd.solve(linear_problem(tspan=(0.0, 2.0)), method(), dt=dt).u)
    err = np.max(np.abs(run().numpy() - linear_exact([0.0, 2.0])))
    assert err < with_dt, f"{method.__name__}: {err:.2e}"
    assert err > 1e-3 * with_dt  # really a fixed-step solve, not something more accurate


# --- API shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_odeint_shapes(shape):
    u0 = np.arange(1.0, 1.0 + np.prod(shape, dtype=int)).reshape(shape)
    t = tf.constant([0.0, 0.3, 0.7, 1.0], F64)
    u = sd.odeint(lambda t, u, p: -p * u, tf.constant(u0, F64), t, tf.constant(DECAY_K, F64), rtol=1e-8, atol=1e-10)
    assert u.shape == (4,) + shape
    assert u.dtype == F64
    expect = np.exp(-DECAY_K * t.numpy()).reshape((4,) + (1,) * len(shape)) * u0
    np.testing.assert_allclose(u.numpy(), expect, rtol=1e-6)


def test_odeint_with_nested_parameters_and_list_times():
    def f(t, u, p):
        return -p["k"] * u + p["c"][0]

    p = {"k": tf.constant(2.0, F64), "c": [tf.constant(0.0, F64)]}
    u = sd.odeint(f, tf.constant([1.0], F64), [0.0, 0.5, 1.0], p, alg=sd.DP5(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(u.numpy()[:, 0], np.exp(-2.0 * np.array([0.0, 0.5, 1.0])), rtol=1e-6)


def test_solution_fields_and_problem_attributes():
    prob = decay_problem()
    assert prob.f is not None and prob.tspan == (0.0, 2.0)
    np.testing.assert_array_equal(prob.u0.numpy(), DECAY_U0)
    assert float(prob.p) == DECAY_K
    sol = sd.solve(prob, sd.Tsit5())
    # saveat=None saves t0 and t1.
    np.testing.assert_array_equal(sol.t.numpy(), [0.0, 2.0])
    assert sol.u.shape == (2, 2) and sol.u.dtype == F64
    assert int(sol.status) == 0 and sol.status.dtype == tf.int32
    assert bool(sol.success) and sol.message == "success"
    assert set(sol.stats) >= {"nfe", "steps", "accepted", "rejected"}
    assert sol.prob is prob and isinstance(sol.alg, sd.Tsit5)
    summary = sol.summary()
    assert "Tsit5" in summary and "nfe=" in summary and "status: 0" in summary


# --- execution modes -----------------------------------------------------------------

MODE_TS = (0.0, 0.4, 1.1, 1.5)


def _mode_solve(method):
    def run(u0, p):
        prob = sd.models.lotka_volterra(tspan=(0.0, 1.5)).remake(u0=u0, p=p)
        opts = dict(dt=0.05) if not method().adaptive else dict(rtol=1e-6, atol=1e-8)
        sol = sd.solve(prob, method(), saveat=tf.constant(MODE_TS, F64), **opts)
        return sol.u, sol.status, sol.stats

    return run


@functools.lru_cache(maxsize=None)
def _eager_result(method):
    u, status, stats = _mode_solve(method)(tf.constant([1.0, 1.0], F64), tf.constant([1.5, 1.0, 3.0, 1.0], F64))
    return u.numpy(), int(status), {k: int(v) for k, v in stats.items()}


@pytest.mark.parametrize("method", ALL_METHODS, ids=name_of)
def test_execution_modes_agree(method, execution_mode):
    run = execution_mode(_mode_solve(method))
    u, status, stats = run(tf.constant([1.0, 1.0], F64), tf.constant([1.5, 1.0, 3.0, 1.0], F64))
    u_eager, status_eager, stats_eager = _eager_result(method)
    assert int(status) == status_eager == 0
    np.testing.assert_allclose(u.numpy(), u_eager, rtol=1e-12, atol=1e-14)
    assert {k: int(v) for k, v in stats.items()} == stats_eager
    # And it is a solution, not merely a reproducible number.
    ref = lotka_volterra_reference(MODE_TS)
    np.testing.assert_allclose(u.numpy(), ref, atol={1: 0.15, 2: 1e-2}.get(method().order, 2e-3))


@pytest.mark.parametrize("method", [sd.RK4, sd.Tsit5, sd.DP8], ids=name_of)
def test_no_retrace_for_same_shaped_inputs(method):
    @tf.function(jit_compile=True)
    def run(u0, p, t1, saveat):
        prob = sd.models.lotka_volterra().remake(u0=u0, p=p, tspan=(tf.constant(0.0, F64), t1))
        opts = dict(dt=0.05) if not method().adaptive else dict(rtol=1e-5, atol=1e-7)
        sol = sd.solve(prob, method(), saveat=saveat, **opts)
        return sol.u, sol.status

    u_a, s_a = run(tf.constant([1.0, 1.0], F64), tf.constant([1.5, 1.0, 3.0, 1.0], F64),
                   tf.constant(1.0, F64), tf.constant([0.0, 0.5, 1.0], F64))
    u_b, s_b = run(tf.constant([1.2, 0.8], F64), tf.constant([1.4, 1.1, 3.0, 1.0], F64),
                   tf.constant(2.0, F64), tf.constant([0.0, 1.2, 2.0], F64))
    assert run.experimental_get_tracing_count() == 1
    assert int(s_a) == int(s_b) == 0
    # The second call really used the new values.
    ref_b = lotka_volterra_reference((0.0, 1.2, 2.0), u0=(1.2, 0.8), p=(1.4, 1.1, 3.0, 1.0))
    np.testing.assert_allclose(u_b.numpy(), ref_b, atol=1e-3)


# --- dtypes and batching -------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol, atol, tol", [(tf.float32, 1e-5, 1e-6, 2e-4), (tf.float64, 1e-9, 1e-11, 1e-7)])
@pytest.mark.parametrize("method", [sd.DP5, sd.Tsit5, sd.RK4], ids=name_of)
def test_float32_and_float64(method, dtype, rtol, atol, tol):
    ts = (0.0, 1.0, 2.5)

    @tf.function(jit_compile=True)
    def run():
        prob = lv_problem(dtype=dtype, tspan=(0.0, 2.5))
        opts = dict(dt=0.01 if dtype == tf.float64 else 0.05) if not method().adaptive else dict(rtol=rtol, atol=atol)
        sol = sd.solve(prob, method(), saveat=tf.constant(ts, dtype), **opts)
        return sol.u, sol.status, sol.t

    u, status, t = run()
    assert u.dtype == dtype and t.dtype == dtype and status.dtype == tf.int32
    assert int(status) == 0
    err = np.max(np.abs(u.numpy().astype(np.float64) - lotka_volterra_reference(ts)))
    assert err < tol, f"{dtype.name}: {err:.2e}"


BATCH_U0 = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 1.5]])


@pytest.mark.parametrize("method", [sd.Tsit5, sd.RK4], ids=name_of)
def test_batched_u0_matches_unbatched_solves(method):
    ts = (0.0, 1.0, 3.0)
    opts = dict(dt=0.02) if not method().adaptive else dict(rtol=1e-8, atol=1e-10)

    @tf.function(jit_compile=True)
    def run(u0):
        sol = sd.solve(lv_problem(tspan=(0.0, 3.0)).remake(u0=u0), method(), saveat=tf.constant(ts, F64), **opts)
        return sol.u, sol.status

    batched, status = run(tf.constant(BATCH_U0, F64))
    assert batched.shape == (3, 3, 2) and int(status) == 0
    for i, row in enumerate(BATCH_U0):
        single, _ = run(tf.constant(row, F64))
        # Shared step sizes in the batch: agreement to within the tolerance.
        np.testing.assert_allclose(batched.numpy()[:, i], single.numpy(), rtol=0, atol=1e-6)
        ref = lotka_volterra_reference(ts, u0=tuple(row))
        np.testing.assert_allclose(batched.numpy()[:, i], ref, rtol=0, atol=1e-6 if method().adaptive else 2e-5)


def test_batched_linear_system():
    u0 = np.stack([LINEAR_U0, -2.0 * LINEAR_U0, np.array([0.0, 1.0, 0.0])])
    prob = sd.ODEProblem(linear_rhs, tf.constant(u0, F64), (0.0, 1.0), tf.constant(LINEAR_A, F64))
    sol = sd.solve(prob, sd.DP5(), rtol=1e-9, atol=1e-11)
    for i in range(3):
        np.testing.assert_allclose(sol.u.numpy()[-1, i], linear_exact([1.0], u0=u0[i])[0], atol=1e-8)


# --- backwards integration and save points -------------------------------------------


@pytest.mark.parametrize("method", [sd.Tsit5, sd.BS3, sd.DP8, sd.RK4], ids=name_of)
def test_backwards_integration(method):
    # From t0 = 2 back to t1 = -0.5: u(t) = u0 exp(-k (t - 2)).
    saveat = np.array([2.0, 1.3, 0.0, -0.5])
    opts = dict(dt=0.05) if not method().adaptive else dict(rtol=1e-8, atol=1e-10)
    sol = sd.solve(decay_problem(tspan=(2.0, -0.5)), method(), saveat=tf.constant(saveat, F64), **opts)
    np.testing.assert_array_equal(sol.t.numpy(), saveat)
    np.testing.assert_allclose(sol.u.numpy(), decay_exact(saveat, t0=2.0), rtol=2e-6)


def test_backwards_linear_system_returns_to_start():
    fwd = sd.solve(linear_problem(tspan=(0.0, 1.5)), sd.DP8(), rtol=1e-11, atol=1e-13)
    u1 = fwd.u[-1]
    back = sd.solve(linear_problem(tspan=(1.5, 0.0), u0=u1.numpy()), sd.DP8(), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(back.u.numpy()[-1], LINEAR_U0, atol=1e-9)
    np.testing.assert_allclose(u1.numpy(), linear_exact([1.5])[0], atol=1e-9)


@pytest.mark.parametrize(
    "tspan, saveat",
    [
        ((0.0, 2.0), [0.0, 0.5, 2.0]),  # includes t0 and t1
        ((0.0, 2.0), [0.25, 1.0, 1.75]),  # interior only
        ((0.0, 2.0), [0.5, 0.5, 1.0]),  # repeated time
        ((2.0, 0.0), [2.0, 1.0, 0.0]),  # backwards, includes both ends
        ((2.0, 0.0), [1.9, 0.1]),  # backwards, interior only
    ],
)
def test_saveat(tspan, saveat):
    sol = sd.solve(decay_problem(tspan=tspan), sd.Tsit5(), saveat=tf.constant(saveat, F64), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(sol.t.numpy(), saveat)
    assert sol.u.shape == (len(saveat), 2)
    np.testing.assert_allclose(sol.u.numpy(), decay_exact(saveat, t0=tspan[0]), rtol=1e-7)
    if saveat[0] == tspan[0]:  # the initial value is stored as given
        np.testing.assert_array_equal(sol.u.numpy()[0], DECAY_U0)


def test_saveat_does_not_change_the_steps():
    # Compiled: the claim is about the loop, and eager Lotka-Volterra is slow.
    dense = tf.function(
        lambda: sd.solve(lv_problem(), sd.DP5(), saveat=tf.constant(np.linspace(0, 10, 201), F64), rtol=1e-6, atol=1e-8),
        jit_compile=True,
    )()
    ends = tf.function(lambda: sd.solve(lv_problem(), sd.DP5(), rtol=1e-6, atol=1e-8), jit_compile=True)()
    assert int(dense.stats["steps"]) == int(ends.stats["steps"])
    np.testing.assert_allclose(dense.u.numpy()[-1], ends.u.numpy()[-1], rtol=1e-14)
    # Interpolated values are as good as the steps (4th-order dense output).
    ref = lotka_volterra_reference(tuple(np.linspace(0, 10, 201)))
    assert np.max(np.abs(dense.u.numpy() - ref)) < 1e-3


# --- statistics ----------------------------------------------------------------------

# Extra right-hand side evaluations before the first step: f(t0, u0) and, for
# adaptive methods with automatic dt, one for the initial step size.


@pytest.mark.parametrize("method", ALL_METHODS, ids=name_of)
def test_stats_are_consistent(method):
    # A far too large first step forces rejections in the adaptive methods.
    opts = dict(dt=0.1) if not method().adaptive else dict(dt=2.0, rtol=1e-6, atol=1e-8)
    calls = []

    def f(t, u, p):
        calls.append(1)
        return sd.models.lotka_volterra().f(t, u, p)

    prob = sd.ODEProblem(f, tf.constant([1.0, 1.0], F64), (0.0, 1.6), tf.constant([1.5, 1.0, 3.0, 1.0], F64))
    sol = sd.solve(prob, method(), compile=False, **opts)  # op by op: every call of f runs
    s = {k: int(v) for k, v in sol.stats.items()}
    assert s["steps"] == s["accepted"] + s["rejected"]
    tab = method().tableau
    # saveat=None saves t0 and t1; the value at t1 is the last step's own end
    # value, so even DP8 spends no extra dense-output stages on it.
    assert s["nfe"] == 1 + tab.stages * s["steps"], s
    assert s["nfe"] == len(calls)  # eager: every call of f is one evaluation
    if method().adaptive:
        assert s["rejected"] >= 1, s


def test_nfe_counts_initial_step_and_dense_stages():
    ts = tf.constant([0.0, 0.33, 0.7, 1.6], F64)
    sol = sd.solve(lv_problem(tspan=(0.0, 1.6)), sd.DP8(), saveat=ts, rtol=1e-6, atol=1e-8)
    s = {k: int(v) for k, v in sol.stats.items()}
    # 1 (f0) + 1 (initial step) + 12 per step + 3 extra dense stages per step
    # holding an interior save point (0.33 and 0.7: one or two steps); the
    # save point on t1 takes the last step's end value for free.
    extra = s["nfe"] - 2 - 12 * s["steps"]
    assert extra in (3, 6), s
    assert s["rejected"] == 0 and s["steps"] >= 3, s


@pytest.mark.parametrize(
    "T, dt",
    [
        (2.0, 0.25),
        (1.0, 0.3),
        (1.0, 0.01),
        # 0.1 is inexact: nine steps sum to just below 0.9 and the tenth ends at
        # 0.9999999999999999; the loop folds that few-ulp remainder into it.
        (1.0, 0.1),
    ],
)
@pytest.mark.parametrize("method", [sd.Euler, sd.RK4], ids=name_of)
def test_fixed_step_count(method, T, dt):
    sol = sd.solve(decay_problem(tspan=(0.0, T)), method(), dt=dt)
    n = math.ceil(round(T / dt, 9))
    s = {k: int(v) for k, v in sol.stats.items()}
    assert s["steps"] == s["accepted"] == n and s["rejected"] == 0, s
    assert s["nfe"] == 1 + method().tableau.stages * n


def test_fixed_step_count_backwards():
    sol = sd.solve(decay_problem(tspan=(1.0, 0.0)), sd.RK4(), dt=0.3)
    assert int(sol.stats["steps"]) == 4
    np.testing.assert_allclose(sol.u.numpy()[-1], decay_exact([0.0], t0=1.0)[0], rtol=1e-4)


# --- efficiency ------------------------------------------------------------------------


def test_dp5_nfe_close_to_scipy_rk45():
    rtol, atol = 1e-6, 1e-8
    scipy_nfev = scipy_rk45_nfev(rtol, atol)
    run = tf.function(lambda: sd.solve(lv_problem(), sd.DP5(), rtol=rtol, atol=atol), jit_compile=True)
    sol = run()
    nfe = int(sol.stats["nfe"])
    assert int(sol.status) == 0
    assert abs(nfe - scipy_nfev) <= 0.25 * scipy_nfev, f"sensode DP5 nfe {nfe}, SciPy RK45 nfev {scipy_nfev}"
    np.testing.assert_allclose(sol.u.numpy()[-1], lotka_volterra_reference((0.0, 10.0))[-1], atol=1e-4)
