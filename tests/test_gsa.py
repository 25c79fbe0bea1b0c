"""Global sensitivity analysis: estimators against closed forms and SALib,
DGSM against finite differences, ODEModel and the command line.

Ensemble solves (`gsa.solve_ensemble`) are tested in test_ensemble.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import gsa

# --- closed-form test functions -------------------------------------------------


def ishigami(x, a=7.0, b=0.1):
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def ishigami_indices(a=7.0, b=0.1):
    v1 = 0.5 * (1 + b * np.pi**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * np.pi**8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    return np.array([v1, v2, 0.0]) / v, np.array([v1 + v13, v2, v13]) / v


G_A = np.array([0.0, 1.0, 4.5, 9.0, 99.0, 99.0])


def g_function(x):
    return np.prod((np.abs(4 * x - 2) + G_A) / (1 + G_A), axis=1)


def g_indices():
    vi = 1.0 / (3 * (1 + G_A) ** 2)
    v = np.prod(1 + vi) - 1
    return vi / v, vi * np.prod(1 + vi) / (1 + vi) / v


ISHIGAMI = gsa.ParameterSpace(["x1", "x2", "x3"], [[-np.pi, np.pi]] * 3)
G_SPACE = gsa.ParameterSpace([f"x{i}" for i in range(6)], [[0.0, 1.0]] * 6)


def _within(est, lo, hi, exact):
    """The exact value lies in the bootstrap interval, widened by one ulp of rounding."""
    return np.all((exact >= lo - 1e-12) & (exact <= hi + 1e-12))


@pytest.mark.parametrize("fn, space, exact", [(ishigami, ISHIGAMI, ishigami_indices()), (g_function, G_SPACE, g_indices())])
def test_sobol_closed_form_within_bootstrap_ci(fn, space, exact):
    res = gsa.sobol(fn, space, 2**14, seed=1, num_resamples=300, conf_level=0.99)
    s1, st = exact
    assert _within(res.S1, *res.S1_ci, s1), (res.S1, res.S1_ci, s1)
    assert _within(res.ST, *res.ST_ci, st), (res.ST, res.ST_ci, st)
    # The intervals are narrow enough to mean something.
    assert np.max(res.S1_ci[1] - res.S1_ci[0]) < 0.12 and np.max(res.ST_ci[1] - res.ST_ci[0]) < 0.12
    assert np.max(np.abs(res.S1 - s1)) < 0.03 and np.max(np.abs(res.ST - st)) < 0.03


def test_sobol_time_resolved_and_random_sampler():
    # y(t) = t x1 + (1 - t) x2 with x ~ U(0, 1): S1 = (t^2, (1 - t)^2) / (t^2 + (1 - t)^2), additive so ST = S1.
    t = np.linspace(0.0, 1.0, 5)
    space = gsa.ParameterSpace(["x1", "x2"], [[0, 1], [0, 1]])
    res = gsa.sobol(lambda x: x[:, :1] * t + x[:, 1:] * (1 - t), space, 2**13, sampler="random", num_resamples=50)
    exact = np.stack([t**2, (1 - t) ** 2]) / (t**2 + (1 - t) ** 2)
    assert res.S1.shape == (2, 5) and res.S1_ci.shape == (2, 2, 5)
    np.testing.assert_allclose(res.S1, exact, atol=0.03)
    np.testing.assert_allclose(res.ST, exact, atol=0.03)


def test_morris_linear_function_exact():
    # y = sum c_i x_i on bounds [0, w_i]: every elementary effect is c_i w_i in normalised units.
    c, w = np.array([2.0, -1.0, 0.0]), np.array([1.0, 3.0, 2.0])
    space = gsa.ParameterSpace(["a", "b", "c"], np.stack([np.zeros(3), w], 1))
    res = gsa.morris(lambda x: x @ c, space, 20, num_resamples=20)
    np.testing.assert_allclose(res.mu, c * w, atol=1e-12)
    np.testing.assert_allclose(res.mu_star, np.abs(c * w), atol=1e-12)
    np.testing.assert_allclose(res.sigma, 0.0, atol=1e-12)


def test_morris_ishigami_ranks_x3_interaction():
    res = gsa.morris(ishigami, ISHIGAMI, 200, seed=3, num_resamples=50)
    # x3 acts only through its interaction with x1: mu near 0, sigma large.
    assert abs(res.mu[2]) < 0.5 * res.sigma[2]
    assert res.mu_star[1] > res.mu_star[2]


def test_dgsm_bounds_total_index_ishigami():
    class Ishi:
        def value_and_grad(self, x):
            a, b = 7.0, 0.1
            g = np.stack(
                [np.cos(x[:, 0]) * (1 + b * x[:, 2] ** 4), 2 * a * np.sin(x[:, 1]) * np.cos(x[:, 1]), 4 * b * x[:, 2] ** 3 * np.sin(x[:, 0])],
                axis=1,
            )
            return ishigami(x), g

    res = gsa.dgsm(Ishi(), ISHIGAMI, 2**13, num_resamples=50)
    _, st = ishigami_indices()
    assert np.all(res.bound >= st - 0.02), (res.bound, st)
    # nu_1 = E[cos^2 x1] E[(1 + b x3^4)^2] in closed form.
    b = 0.1
    nu1 = 0.5 * (1 + 2 * b * np.pi**4 / 5 + b**2 * np.pi**8 / 9)
    assert abs(res.nu[0] - nu1) / nu1 < 0.02


# --- cross-check against SALib on identical samples ---------------------------


def test_against_salib_sobol_morris_dgsm():
    salib_sobol = pytest.importorskip("SALib.analyze.sobol")
    from SALib.analyze import dgsm as salib_dgsm
    from SALib.analyze import morris as salib_morris
    from SALib.sample import finite_diff
    from SALib.sample import morris as salib_morris_sample

    design = gsa.saltelli(ISHIGAMI, 2**10, sampler="salib", seed=4)
    y = ishigami(design.stacked())
    ours = gsa.sobol_indices(*design.split(y), num_resamples=0)
    theirs = salib_sobol.analyze(ISHIGAMI.to_salib(), y, calc_second_order=False, num_resamples=10, seed=1)
    np.testing.assert_allclose(ours.S1, theirs["S1"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.ST, theirs["ST"], rtol=1e-12, atol=1e-14)

    mdesign = gsa.morris_trajectories(ISHIGAMI, 50, sampler="salib", seed=5)
    ym = ishigami(mdesign.x.reshape(-1, 3))
    ours_m = gsa.morris_indices(mdesign.unit, ym.reshape(50, 4), num_resamples=0)
    theirs_m = salib_morris.analyze(ISHIGAMI.to_salib(), mdesign.x.reshape(-1, 3), ym, num_levels=4)
    np.testing.assert_allclose(ours_m.mu, theirs_m["mu"], rtol=1e-10)
    np.testing.assert_allclose(ours_m.mu_star, theirs_m["mu_star"], rtol=1e-10)
    np.testing.assert_allclose(ours_m.sigma, theirs_m["sigma"], rtol=1e-10)

    # DGSM: SALib's finite-difference derivatives fed to our estimator.
    x = finite_diff.sample(ISHIGAMI.to_salib(), 500, delta=1e-6, seed=6)
    yd = ishigami(x)
    base, xb = yd[::4], x[::4]
    grad = np.stack([(yd[j + 1 :: 4] - base) / (x[j + 1 :: 4, j] - xb[:, j]) for j in range(3)], axis=1)
    ours_d = gsa.dgsm_indices(base, grad, ISHIGAMI.bounds, num_resamples=0)
    theirs_d = salib_dgsm.analyze(ISHIGAMI.to_salib(), x, yd, num_resamples=10)
    np.testing.assert_allclose(ours_d.nu, theirs_d["vi"], rtol=1e-10)
    np.testing.assert_allclose(ours_d.bound, theirs_d["dgsm"], rtol=1e-10)


def test_own_sobol_design_matches_salib_layout():
    d = gsa.saltelli(ISHIGAMI, 8, seed=0)
    x = d.stacked().reshape(8, 5, 3)
    np.testing.assert_array_equal(x[:, 0], d.A)
    np.testing.assert_array_equal(x[:, 4], d.B)
    for i in range(3):
        expect = d.A.copy()
        expect[:, i] = d.B[:, i]
        np.testing.assert_array_equal(x[:, 1 + i], expect)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gsa.saltelli(ISHIGAMI, 8, sampler="lhs"), "`sampler`"),
        (lambda: gsa.saltelli(ISHIGAMI, 1), "`n`"),
        (lambda: gsa.ParameterSpace(["a"], [[1.0, 0.0]]), "`bounds`"),
        (lambda: gsa.sobol_indices(np.ones(4), np.ones(4), np.ones((3, 2))), "`y_ab`"),
        (lambda: gsa.morris_indices(np.zeros((2, 3, 2)), np.zeros((2, 3))), "one-at-a-time"),
        (lambda: gsa.dgsm_indices(np.ones(3), np.ones((3, 2)), [[0, 1]]), "`bounds`"),
        (lambda: gsa.sobol_indices(np.ones(4), np.ones(4), np.ones((4, 2)), conf_level=2.0, num_resamples=2), "`conf_level`"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- an ODE whose variance decomposes analytically --------------------------------

TS = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)  # save times of the time-resolved indices


def test_sobol_and_dgsm_of_exponential_decay():
    # y = u(T) = u0 exp(-k T), u0 ~ U(0.5, 1.5), k ~ U(0.2, 1.0): a product of independent factors.
    T, (a, b), (c, d) = 2.0, (0.5, 1.5), (0.2, 1.0)
    prob = sd.models.exponential_decay(tspan=(0.0, T))
    space = gsa.ParameterSpace(["u0", "k"], [[a, b], [c, d]])
    model = gsa.ODEModel(
        prob, "final", inputs=lambda th: (th[:, :1], th[:, 1]), rtol=1e-9, atol=1e-12, batch_size=1024, sensealg=sd.ForwardSensitivity()
    )
    res = gsa.sobol(model, space, 2**8, num_resamples=200, conf_level=0.99)
    ex, ex2 = (a + b) / 2, (a * a + a * b + b * b) / 3
    ez = (np.exp(-c * T) - np.exp(-d * T)) / (T * (d - c))
    ez2 = (np.exp(-2 * c * T) - np.exp(-2 * d * T)) / (2 * T * (d - c))
    v = ex2 * ez2 - ex**2 * ez**2
    s1 = np.array([(ex2 - ex**2) * ez**2, ex**2 * (ez2 - ez**2)]) / v
    assert _within(res.S1, *res.S1_ci, s1), (res.S1, res.S1_ci, s1)
    assert _within(res.ST, *res.ST_ci, 1 - s1[::-1]), (res.ST, res.ST_ci, 1 - s1[::-1])

    # DGSM: per-sample gradients against central finite differences of the closed form.
    theta = gsa.uniform(space, 64, seed=2)
    y, g = model.value_and_grad(theta)
    exact = lambda th: th[:, 0] * np.exp(-th[:, 1] * T)
    np.testing.assert_allclose(y, exact(theta), rtol=1e-8)
    h = 1e-6
    fd = np.stack([(exact(theta + h * e) - exact(theta - h * e)) / (2 * h) for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    dres = gsa.dgsm(model, space, 64, seed=2, num_resamples=50)
    assert np.all(dres.bound >= res.ST - 0.05)


def test_time_resolved_ode_model_and_morris():
    prob, space = gsa.model_space("lotka_volterra")
    model = gsa.ODEModel(prob, "trajectory", saveat=TS, rtol=1e-6, atol=1e-8, batch_size=64)
    res = gsa.morris(model, space, 8, num_resamples=10)
    assert res.mu_star.shape == (4, 6)
    np.testing.assert_allclose(res.mu_star[:, 0], 0.0, atol=1e-12)  # u(0) does not depend on p
    assert np.all(res.mu_star[:, 1:] > 0)


# --- command line ---------------------------------------------------------------


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "sensode.gsa", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_help_and_bad_flag():
    assert _cli("--help").returncode == 0
    bad = _cli("--method=anova")
    assert bad.returncode != 0
    lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
    assert "--method" in lines[-1] and "sobol" in lines[-1]


def test_cli_sobol_json(tmp_path):
    out = tmp_path / "r.json"
    proc = _cli("--problem=exponential_decay", "--method=sobol", "--n=64", "--resamples=20", f"--json_out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    data = json.loads(out.read_text())
    assert data["method"] == "sobol" and data["result"]["names"] == ["k"]
    # One input explains everything: both indices near 1 (estimators, not identities).
    assert abs(data["result"]["S1"][0] - 1.0) < 0.05 and abs(data["result"]["ST"][0] - 1.0) < 0.05
    assert "k" in proc.stdout
