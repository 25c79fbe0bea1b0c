"""Butcher tableaus: validation, order of convergence, dense output.

The convergence tests drive the generic step `sensode.rk.rk_step` with a fixed
step size in a compiled `tf.while_loop`, so adaptive tableaus are measured as
methods, independent of the step-size controller. Reference: `scipy.linalg.expm`.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode.ode import rk
from sensode.ode import tableaus as tb

from reference_problems import ALL_METHODS, LINEAR_A, LINEAR_U0, linear_exact

# --- validation ------------------------------------------------------------------

_HEUN = dict(name="T", a=[[], [1.0]], b=[0.5, 0.5], c=[0.0, 1.0], order=2)


def _heun_euler(**over):
    """Heun--Euler 2(1): a valid adaptive tableau to break one piece at a time."""
    kw = dict(_HEUN, b_err=[-0.5, 0.5, 0.0], error_order=1)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(_HEUN, a=[[], [0.9]]), "rows of `a` must sum to `c`"),
        (dict(_HEUN, c=[0.0, 0.5]), "rows of `a` must sum to `c`"),
        (dict(_HEUN, b=[0.5, 0.6]), "sum(b) must be 1"),
        (dict(_HEUN, c=[0.1, 1.0], a=[[], [0.9]]), "c[0] must be 0"),
        (dict(_HEUN, a=[[0.0, 0.3], [1.0]]), "strictly lower triangular"),
        (dict(_HEUN, b=[0.25, 0.25, 0.5]), "same number of stages"),
        (_heun_euler(b_err=[-0.5, 0.5, 0.1]), "sum(b_err) must be 0"),
        (_heun_euler(b_err=[-0.5, 0.5]), "`b_err` needs s + 1 = 3 entries"),
        (_heun_euler(error_order=None), "give `b_err` and `error_order` together"),
        (_heun_euler(b_err_secondary=[1.0, 0.0, 0.0]), "sum(b_err_secondary) must be 0"),
        # theta = 1 must give the step: weights sum to b over the stages, 0 on f_new.
        (dict(_HEUN, dense=[[0.5, 0.0], [0.5, 0.0], [0.1, 0.0]]), "does not reproduce the step"),
        (dict(_HEUN, dense=[[0.6], [0.5], [0.0]]), "does not reproduce the step"),
        (dict(_HEUN, dense=[[0.5], [0.5]]), "`dense` needs 3 rows"),
    ],
)
def test_invalid_tableau_is_rejected(kwargs, message):
    with pytest.raises(ValueError) as info:
        tb.ButcherTableau(**kwargs)
    assert message in str(info.value)
    assert str(info.value).startswith(kwargs["name"] + ":")  # the message names the method


def test_valid_tableau_derives_its_properties():
    fixed = tb.ButcherTableau(**_HEUN)
    assert fixed.stages == 2 and not fixed.adaptive and fixed.extra_stages == 0
    assert fixed.dense_degree == 3  # cubic Hermite by default
    adaptive = tb.ButcherTableau(**_heun_euler())
    assert adaptive.adaptive


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_shipped_tableaus_are_consistent(method):
    tab = method().tableau
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, atol=1e-12)
    assert abs(tab.b.sum() - 1.0) < 1e-12
    assert tab.adaptive == (method in (sd.BS3, sd.DP5, sd.Tsit5, sd.DP8))
    if tab.adaptive:
        assert abs(tab.b_err.sum()) < 1e-12
        assert tab.error_order < tab.order


# --- order of convergence --------------------------------------------------------

T_ORDER = 1.0
# Step counts per method: in the asymptotic range and above round-off.
ORDER_STEPS = {
    "Euler": [32, 64, 128, 256],
    "Midpoint": [16, 32, 64, 128],
    "Heun": [16, 32, 64, 128],
    "RK4": [8, 16, 32, 64],
    "BS3": [8, 16, 32, 64],
    "DP5": [4, 8, 16, 32],
    "Tsit5": [16, 32, 64],
    "DP8": [2, 3, 4, 6],
}
# The embedded solution y1 - err. DP8's primary estimator is DOP853's E5 (a
# 5th-order embedded solution); its `error_order` 7 describes the combined
# E5/E3 estimate, so it is checked against 5 here.
EMBEDDED_ORDER = {"BS3": 2, "DP5": 4, "Tsit5": 4, "DP8": 5}
EMBEDDED_STEPS = {"BS3": [8, 16, 32, 64], "DP5": [8, 16, 32, 64], "Tsit5": [8, 16, 32, 64], "DP8": [4, 8, 16, 32]}


@functools.lru_cache(maxsize=None)
def _fixed_step_runner(tab):
    """Compiled ``n -> (y(T), y_embedded(T))`` with ``n`` equal steps of ``rk_step``."""
    A = tf.constant(LINEAR_A, tf.float64)

    def fn(t, y):
        return [tf.linalg.matvec(A, y[0])]

    @tf.function(jit_compile=True)
    def run(n):
        h = tf.constant(T_ORDER, tf.float64) / tf.cast(n, tf.float64)
        y0 = [tf.constant(LINEAR_U0, tf.float64)]

        def body(i, y, ye):
            t = tf.cast(i, tf.float64) * h
            y1 = rk.rk_step(fn, tab, t, y, fn(t, y), h).y1
            if tab.adaptive:
                st = rk.rk_step(fn, tab, t, ye, fn(t, ye), h)
                ye = [a - b for a, b in zip(st.y1, st.err)]
            return i + 1, y1, ye

        _, y, ye = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), y0, y0))
        return y[0], ye[0]

    return run


def _errors(tab, steps, which):
    exact = linear_exact([T_ORDER])[0]
    run = _fixed_step_runner(tab)
    return np.array([np.max(np.abs(run(tf.constant(n))[which].numpy() - exact)) for n in steps])


def _slope(steps, errors):
    h = T_ORDER / np.asarray(steps, dtype=np.float64)
    return np.polyfit(np.log(h), np.log(errors), 1)[0]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_order_of_convergence(method):
    tab = method().tableau
    steps = ORDER_STEPS[method.__name__]
    errors = _errors(tab, steps, 0)
    assert np.all(errors > 1e-14), f"errors reach round-off, the slope means nothing: {errors}"
    assert np.all(np.diff(errors) < 0), errors
    slope = _slope(steps, errors)
    assert abs(slope - tab.order) < 0.3, f"{tab.name}: observed order {slope:.2f}, tableau says {tab.order}"


@pytest.mark.parametrize("name", sorted(EMBEDDED_ORDER))
def test_order_of_embedded_solution(name):
    tab = getattr(sd, name)().tableau
    steps = EMBEDDED_STEPS[name]
    errors = _errors(tab, steps, 1)
    assert np.all(errors > 1e-14), errors
    slope = _slope(steps, errors)
    assert abs(slope - EMBEDDED_ORDER[name]) < 0.3, f"{name}: embedded order {slope:.2f}"


def test_rk_step_costs_stages_evaluations():
    calls = []

    def fn(t, y):
        calls.append(t)
        return [-y[0]]

    for method in ALL_METHODS:
        tab = method().tableau
        calls.clear()
        y0 = [tf.constant([1.0], tf.float64)]
        rk.rk_step(fn, tab, tf.constant(0.0, tf.float64), y0, [-y0[0]], tf.constant(0.1, tf.float64))
        assert len(calls) == tab.stages, tab.name


# --- dense output ------------------------------------------------------------------

_POLY_T0 = 0.3


def _poly(degree, seed=1):
    """Random polynomial coefficients ``c_j`` of ``P(t) = sum_j c_j (t - 0.3)^j``."""
    return np.random.default_rng(seed + degree).normal(size=degree + 1)


def _poly_problem(coef, tspan):
    # u' = P'(t): the exact solution is u = P(t) (a pure quadrature problem).
    dcoef = np.polynomial.polynomial.polyder(coef)

    def f(t, u, p):
        s = t - _POLY_T0
        out = tf.zeros_like(u)
        for j, c in enumerate(dcoef):
            out = out + float(c) * s**j
        return out

    u0 = np.polynomial.polynomial.polyval(tspan[0] - _POLY_T0, coef)
    return sd.ODEProblem(f, tf.constant([u0], tf.float64), tspan)


def _dense_error(method, degree, tspan=(0.0, 1.5)):
    coef = _poly(degree)
    prob = _poly_problem(coef, tspan)
    # Save points that are never step ends (fixed steps are multiples of 0.25).
    saveat = np.array([0.0, 0.1, 0.37, 0.62, 0.9, 1.13, 1.41, 1.5])
    if tspan[0] > tspan[1]:
        saveat = saveat[::-1]
    kwargs = dict(dt=0.25) if not method().adaptive else dict(rtol=1e-6, atol=1e-9)
    sol = sd.solve(prob, method(), saveat=tf.constant(saveat, tf.float64), **kwargs)
    exact = np.polynomial.polynomial.polyval(saveat - _POLY_T0, coef)
    return np.max(np.abs(sol.u.numpy()[:, 0] - exact)) / np.max(np.abs(exact)), sol


def _exact_degree(method):
    """Highest degree reproduced exactly: the step is exact up to ``order``, the
    interpolant up to ``dense_order``."""
    tab = method().tableau
    return min(tab.order, tab.dense_order)


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_dense_output_reproduces_polynomials(method):
    degree = _exact_degree(method)
    err, sol = _dense_error(method, degree)
    assert err < 1e-12, f"{method.__name__}: degree-{degree} polynomial off by {err:.2e}"
    # Backwards in time too (negative h inside the interpolant).
    err_back, _ = _dense_error(method, degree, tspan=(1.5, 0.0))
    assert err_back < 1e-12, f"{method.__name__} backwards: {err_back:.2e}"


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_dense_output_is_not_exact_one_degree_higher(method):
    # Guards the test above against being vacuous (e.g. save points landing on
    # step ends, where the step value is used instead of the interpolant).
    err, _ = _dense_error(method, _exact_degree(method) + 1)
    assert err > 1e-9, f"{method.__name__}: one degree above its order, still exact ({err:.1e})"
