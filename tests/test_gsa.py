"""Global sensitivity analysis: estimators against closed forms and SALib,
ensembles against single solves, DGSM against finite differences."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
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


# --- ensembles ------------------------------------------------------------------

LV = sd.models.lotka_volterra()
TS = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)
OPTS = dict(saveat=TS, rtol=1e-6, atol=1e-8, max_steps=2000)


def _params(b=4, seed=0):
    # Parameters spanning two orders of magnitude: very different step counts.
    return np.asarray(LV.p)[None] * 10 ** np.random.default_rng(seed).uniform(-0.5, 0.5, size=(b, 4))


def _single(p, u0=None, alg=None, **opts):
    prob = sd.ODEProblem(LV.f, LV.u0 if u0 is None else tf.constant(u0), LV.tspan, tf.constant(p))
    return sd.solve(prob, alg or sd.Tsit5(), throw=False, **dict(OPTS, **opts))


def _assert_matches_single(sol, p, refs=None, **opts):
    """Values to rounding, the same status and the same per-sample counters as single solves."""
    for i in range(len(p)):
        ref = refs[i] if refs is not None else _single(p[i], **opts)
        assert int(sol.status[i]) == int(ref.status), i
        for k in ("nfe", "steps", "accepted", "rejected"):
            assert int(sol.stats[k][i]) == int(ref.stats[k]), (k, i)
        if int(ref.status) == 0:
            np.testing.assert_allclose(sol.u[i], ref.u, rtol=1e-11, atol=1e-11)
        else:
            assert np.all(np.isnan(sol.u[i]))


@pytest.mark.parametrize("mode", ["eager", "graph", "xla", "xla_map"])
def test_ensemble_matches_single_solves_step_for_step(mode):
    # eager / graph / xla: the native batched loop; xla_map: map_fn of single solves.
    p = _params()
    kw = dict(vectorize="map") if mode == "xla_map" else {}
    if mode == "eager":
        sol = gsa.solve_ensemble(LV, p=p, **OPTS, **kw)
    else:
        fn = tf.function(lambda p: gsa.solve_ensemble(LV, p=p, **OPTS, **kw), jit_compile=mode != "graph")
        sol = fn(tf.constant(p))
    assert sol.u.shape == (4, 6, 2)
    refs = [_single(p[i]) for i in range(4)]
    _assert_matches_single(sol, p, refs)
    assert len({int(r.stats["steps"]) for r in refs}) > 1  # the samples did step differently
    np.testing.assert_array_equal(sol.status, 0)


@pytest.mark.parametrize(
    "alg, opts",
    [
        (sd.DP8(), {}),  # extra dense stages and the two-part error norm
        (sd.BS3(), dict(saveat=tf.constant([0.0, 0.37, 0.4, 0.4, 5.0, 10.0], tf.float64))),  # repeated save times
        (sd.DP5(), dict(saveat=None, dtmax=0.3)),
        (sd.RK4(), dict(dt=0.05)),  # fixed step
        (sd.Tsit5(), dict(dt=1e-3, dtmin=1e-9)),  # a given first step
    ],
)
def test_native_loop_methods_match_single_solves(alg, opts):
    p = _params(3, seed=2)
    o = dict(OPTS, alg=alg, **opts)
    sol = gsa.solve_ensemble(LV, p=p, vectorize="native", **o)
    del o["alg"]
    _assert_matches_single(sol, p, alg=alg, **o)


def test_native_loop_backwards_in_time_and_u0_batch():
    prob = sd.ODEProblem(LV.f, LV.u0, (10.0, 0.0), LV.p)
    ts = tf.linspace(tf.constant(10.0, tf.float64), 0.0, 5)
    u0 = np.array([[1.0, 1.0], [0.5, 2.0], [2.0, 0.3]])
    sol = gsa.solve_ensemble(prob, u0=u0, saveat=ts, rtol=1e-6, atol=1e-8)
    for i in range(3):
        ref = sd.solve(sd.ODEProblem(LV.f, tf.constant(u0[i]), (10.0, 0.0), LV.p), saveat=ts, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sol.u[i], ref.u, rtol=1e-11, atol=1e-11)
        assert int(sol.stats["steps"][i]) == int(ref.stats["steps"])


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_native_loop_failures_are_per_sample(mode):
    # Sample 1 exceeds max_steps, sample 2 underflows its step (DT_MIN, as in its own
    # single solve), sample 3 has a NaN parameter; samples 0 and 4 are unaffected.
    p = np.array([np.asarray(LV.p), [15.0, 0.5, 0.5, 0.4], [0.2635112, 1.53299895, 29.68398637, 7.5961118],
                  [np.nan, 1.0, 3.0, 1.0], np.asarray(LV.p) * 0.7])
    opts = dict(OPTS, max_steps=400)
    fn = tf.function(lambda p: gsa.solve_ensemble(LV, p=p, throw=False, **opts), jit_compile=mode == "xla")
    sol = fn(tf.constant(p))
    S = sd.Status
    assert list(sol.status.numpy()) == [0, int(S.MAX_STEPS), int(S.DT_MIN), int(S.NONFINITE), 0]
    _assert_matches_single(sol, p, max_steps=400)


@pytest.mark.parametrize("compact", [True, False])
def test_native_loop_compacted_tail_matches_single_solves(compact):
    # B = 64: once at most 4 samples run, they finish in a compacted batch of 4
    # (the slowest samples, and one that stops at max_steps, run there); without
    # compaction the whole batch runs to the end, with the same results.
    p = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(3).uniform(-0.5, 0.5, size=(64, 4))
    p[5] = [15.0, 0.5, 0.5, 0.4]
    opts = dict(OPTS, max_steps=400)
    sol = gsa.solve_ensemble(LV, p=p, throw=False, compact=compact, **opts)
    steps = sol.stats["steps"].numpy()
    check = sorted(set(np.argsort(steps)[-4:]) | {0, 1, 5})
    assert int(sol.status[5]) == int(sd.Status.MAX_STEPS) and np.sum(sol.status.numpy() != 0) == 1
    _assert_matches_single(sol.__class__(t=sol.t, u=tf.gather(sol.u, check), status=tf.gather(sol.status, check),
                                         stats={k: tf.gather(v, check) for k, v in sol.stats.items()}),
                           p[check], max_steps=400)


def test_ode_model_compacts_a_long_tail_only_when_one_appears():
    # ODEModel without `compact`: the whole batch runs in one compiled loop; a
    # second program (the slow samples compacted) is compiled only for a batch
    # whose last samples still need many steps. Values as single solves either way.
    states = lambda t, u: tf.reshape(u, [tf.shape(u)[0], -1])  # noqa: E731
    model = gsa.ODEModel(LV, states, saveat=TS, rtol=1e-6, atol=1e-8, max_steps=400, batch_size=64)
    resumes = model._f_resume.experimental_get_tracing_count

    near = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(4).uniform(-0.05, 0.05, size=(64, 4))
    y = model(near)
    assert resumes() == 0  # similar samples: their tail is short, no second program
    for i in (0, 31, 63):
        np.testing.assert_allclose(y[i], np.reshape(_single(near[i], max_steps=400).u, -1), rtol=1e-11, atol=1e-11)

    far = _params(64, seed=3)
    far[5] = [15.0, 0.5, 0.5, 0.4]  # stops at max_steps, long after the others
    y = model(far)
    assert resumes() == 1 and model.failed == 1
    assert np.all(np.isnan(y[5]))
    steps = gsa.solve_ensemble(LV, p=far, throw=False, **dict(OPTS, max_steps=400)).stats["steps"].numpy()
    for i in sorted(set(np.argsort(steps)[-4:]) | {0, 1}):  # the compacted samples and two others
        ref = _single(far[i], max_steps=400)
        if int(ref.status) == 0:
            np.testing.assert_allclose(y[i], np.reshape(ref.u, -1), rtol=1e-11, atol=1e-11)
        else:
            assert i == 5 and np.all(np.isnan(y[i]))


def test_eager_ensemble_compacts_a_long_tail_only_when_one_appears(monkeypatch):
    # solve_ensemble called eagerly with the default compact="auto" and no tape: one loop (compact="defer");
    # the compacted tail (resume_batched) is a second program, traced only for a batch whose slow samples are
    # far from done. Under a tape "auto" is compact=True. Values, statuses and stats are those of compact=True.
    from sensode.gsa import ensemble

    built = []  # the loops traced, in order (integrate_batched / resume_batched run only while tracing)
    integrate, resume = ensemble.integrate_batched, ensemble.resume_batched
    monkeypatch.setattr(ensemble, "_EAGER_CACHE", {})
    monkeypatch.setattr(ensemble, "integrate_batched", lambda *a, **k: built.append(k["compact"]) or integrate(*a, **k))
    monkeypatch.setattr(ensemble, "resume_batched", lambda *a, **k: built.append("resume") or resume(*a, **k))
    opts = dict(OPTS, max_steps=400)

    def assert_same(sol, ref):
        np.testing.assert_array_equal(sol.status, ref.status)
        for k in ("nfe", "steps", "accepted", "rejected"):
            np.testing.assert_array_equal(sol.stats[k], ref.stats[k])
        np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)  # NaN rows in the same places

    near = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(4).uniform(-0.05, 0.05, size=(64, 4))
    sol = gsa.solve_ensemble(LV, p=near, **opts)
    assert built == ["defer"]  # similar samples: their tail is short, one loop
    pt = tf.constant(near)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        taped = gsa.solve_ensemble(LV, p=pt, **opts)
        loss = tf.reduce_sum(taped.u[:, -1])
    assert built == ["defer", True]  # a tape records: the program of compact=True
    assert np.all(np.isfinite(tape.gradient(loss, pt)))
    ref = gsa.solve_ensemble(LV, p=near, compact=True, **opts)
    assert built == ["defer", True]  # the same program as under the tape
    assert_same(sol, ref)
    assert_same(taped, ref)
    np.testing.assert_array_equal(sol.status, 0)

    far = _params(64, seed=3)
    far[5] = [15.0, 0.5, 0.5, 0.4]  # stops at max_steps, long after the others
    sol = gsa.solve_ensemble(LV, p=far, throw=False, **opts)
    assert built == ["defer", True, "resume"]  # the compacted tail, traced now
    assert_same(sol, gsa.solve_ensemble(LV, p=far, throw=False, compact=True, **opts))
    assert int(sol.status[5]) == int(sd.Status.MAX_STEPS) and np.sum(sol.status.numpy() != 0) == 1
    assert np.all(np.isnan(sol.u[5]))
    with pytest.raises(sd.SolverError, match="1 of 64 samples failed; sample 5: MAX_STEPS"):
        gsa.solve_ensemble(LV, p=far, **opts)
    assert built == ["defer", True, "resume"]  # nothing traced again


def test_ensemble_in_tf_function_with_u0_batch():
    u0 = np.array([[1.0, 1.0], [0.5, 2.0], [2.0, 0.3]])
    sol = tf.function(lambda u0: gsa.solve_ensemble(LV, u0=u0, **OPTS))(tf.constant(u0))
    for i in range(3):
        ref = _single(np.asarray(LV.p), u0[i])
        np.testing.assert_allclose(sol.u[i], ref.u, rtol=1e-11, atol=1e-11)
        assert int(sol.stats["steps"][i]) == int(ref.stats["steps"])


def test_failing_sample_is_isolated():
    p = _params(3)
    p[1, 0] = np.nan
    with pytest.raises(sd.SolverError, match="1 of 3 samples failed"):
        gsa.solve_ensemble(LV, p=p, **OPTS)
    pt = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        sol = gsa.solve_ensemble(LV, p=pt, throw=False, sensealg=sd.ForwardSensitivity(), **OPTS)
        loss = tf.reduce_sum(tf.where(tf.math.is_finite(sol.u), sol.u, 0.0) ** 2)
    grad = tape.gradient(loss, pt).numpy()
    assert list(sol.status.numpy()) == [0, int(sd.Status.NONFINITE), 0]
    assert np.all(np.isnan(sol.u[1])) and np.all(np.isnan(grad[1]))
    for i in (0, 2):
        np.testing.assert_allclose(sol.u[i], _single(p[i]).u, rtol=1e-11, atol=1e-11)
        assert np.all(np.isfinite(grad[i]))


@pytest.mark.parametrize("sensealg", [sd.DiscreteAdjoint(), sd.ForwardSensitivity(), sd.InterpolatingAdjoint()])
def test_ensemble_gradients_match_single_solves(sensealg):
    p = _params(3, seed=1)
    # Under XLA (map_fn); the pfor gradient path is exercised by test_failing_sample_is_isolated.
    @tf.function(jit_compile=True)
    def batch_grad(pt):
        with tf.GradientTape() as tape:
            tape.watch(pt)
            sol = gsa.solve_ensemble(LV, p=pt, sensealg=sensealg, **OPTS)
            loss = tf.reduce_sum(sol.u[:, -1] ** 2)
        return tape.gradient(loss, pt)

    grad = batch_grad(tf.constant(p)).numpy()
    for i in range(3):
        # The same algorithm on the single solve: equal to rounding, except that
        # ForwardSensitivity's single solve steps under the error control of its
        # sensitivities, so its u (and the loss's cotangent) differ at rtol level.
        rtol = 1e-4 if isinstance(sensealg, sd.ForwardSensitivity) else 1e-8
        np.testing.assert_allclose(grad[i], _single_final_grad(p[i], sensealg), rtol=rtol)


def _single_final_grad(p, sensealg):
    """d sum(u(t1)^2) / dp of one Lotka--Volterra solve (Tsit5, `OPTS`)."""
    pi = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pi)
        ref = sd.solve(sd.ODEProblem(LV.f, LV.u0, LV.tspan, pi), sd.Tsit5(), sensealg=sensealg, **OPTS)
        loss = tf.reduce_sum(ref.u[-1] ** 2)
    return tape.gradient(loss, pi).numpy()


def test_shared_stepping_one_step_count():
    p = _params(3)
    sol = gsa.solve_ensemble(LV, p=p, stepping="shared", **OPTS)
    assert len(set(sol.stats["steps"].numpy())) == 1
    for i in range(3):
        np.testing.assert_allclose(sol.u[i], _single(p[i]).u, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(), ValueError, "give `u0`"),
        (dict(p=np.ones((3, 5))), ValueError, "leaf of `p`"),
        (dict(p=np.ones((3, 4)), u0=np.ones((2, 2))), ValueError, "batch size"),
        (dict(p=np.ones((3, 4)), stepping="local"), ValueError, "`stepping`"),
        (dict(p=np.ones((3, 4)), vectorize="loop"), ValueError, "`vectorize`"),
        (dict(p=np.ones((3, 4)), sensealg="adjoint"), TypeError, "`sensealg`"),
        (dict(p=np.ones((3, 4)), compact="yes"), ValueError, "`compact`"),
        (dict(p=np.ones((3, 4)), compact="defer"), ValueError, "`compact`"),
        (dict(p=np.ones((3, 4)), compact=1), TypeError, "`compact`"),
        (dict(p=np.ones((3, 4)), alg=sd.Rosenbrock23(), vectorize="native"), ValueError, "explicit Runge-Kutta"),
    ],
)
def test_ensemble_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        gsa.solve_ensemble(LV, **kwargs)


# --- an ODE whose variance decomposes analytically --------------------------------


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


# --- several devices ------------------------------------------------------------

_MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import sensode as sd
    from sensode import gsa
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)
    p = np.asarray(prob.p)[None] * np.random.default_rng(0).uniform(0.5, 1.5, size=(6, 4))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    sol = gsa.solve_ensemble_distributed(strategy, prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    ref = gsa.solve_ensemble(prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    assert sol.u.shape == (6, 6, 2), sol.u.shape
    np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sol.stats["steps"], ref.stats["steps"])
    # A second call with new values runs the cached program (XLA per replica): no new trace.
    again = gsa.solve_ensemble_distributed(strategy, prob, p=p * 1.01, saveat=ts, rtol=1e-6, atol=1e-8)
    (_, run), = gsa.distributed._CACHE.values()
    assert run.experimental_get_tracing_count() == 1, run.experimental_get_tracing_count()
    np.testing.assert_allclose(again.u, gsa.solve_ensemble(prob, p=p * 1.01, saveat=ts, rtol=1e-6, atol=1e-8).u,
                               rtol=1e-12, atol=1e-12)
    print("OK")
    """
)


def test_mirrored_strategy_splits_the_ensemble():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


_MULTI_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG names the two local workers
    import sensode as sd
    from sensode import gsa
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)
    p = np.asarray(prob.p)[None] * np.random.default_rng(0).uniform(0.5, 1.5, size=(7, 4))  # 7: one padded
    sol = gsa.solve_ensemble_distributed(strategy, prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    ref = gsa.solve_ensemble(prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    assert sol.u.shape == (7, 6, 2), sol.u.shape
    np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sol.stats["steps"], ref.stats["steps"])
    print("OK", json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    """
)


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_strategy_splits_the_ensemble_across_two_processes():
    # Two local worker processes on loopback addresses, as on two machines: each gets half the
    # samples, the results are all-gathered and equal a single-process ensemble on every worker.
    import json

    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-c", _MULTI_WORKER], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for index, (proc, (out, err)) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0 and f"OK {index}" in out, out[-2000:] + err[-4000:]


def test_eager_ensemble_gradients_vectorised_with_pfor_match_single_solves():
    # In a plain graph (here compile=False) the backward pass vectorises each sample's adjoint solve with pfor, in
    # which a sample's chunk index differs from the others': reading a chunk with a slice failed to trace ("expected
    # to be loop invariant"), for InterpolatingAdjoint and QuadratureAdjoint (the same chunked backward pass; one is
    # tested: 35 s of tracing).
    sensealg = sd.InterpolatingAdjoint()
    p = _params(3, seed=2)
    pt = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        sol = gsa.solve_ensemble(LV, p=pt, sensealg=sensealg, compile=False, **OPTS)
        loss = tf.reduce_sum(sol.u[:, -1] ** 2)
    grad = tape.gradient(loss, pt).numpy()
    for i in range(3):
        np.testing.assert_allclose(grad[i], _single_final_grad(p[i], sensealg), rtol=1e-8)


def test_eager_ensemble_runs_xla_compiled_unless_compile_false():
    # Eager calls run cached XLA programs (a plain graph ran Lotka-Volterra ensembles ~30x slower); compile=False
    # and vectorize="pfor" (not XLA-compilable) keep a plain graph. Same values either way.
    p = tf.constant(_params(3, seed=4))
    cache = gsa.ensemble._EAGER_CACHE
    cache.clear()
    with tf.GradientTape() as tape:
        tape.watch(p)
        sol = gsa.solve_ensemble(LV, p=p, sensealg=sd.BacksolveAdjoint(), **OPTS)
        loss = tf.reduce_sum(sol.u[:, -1] ** 2)
    np.testing.assert_allclose(tape.gradient(loss, p).numpy()[1], _single_final_grad(p[1].numpy(), sd.BacksolveAdjoint()),
                               rtol=1e-8)
    staged = [gsa.solve_ensemble(LV, p=p, compile=c, **OPTS).u.numpy() for c in (True, False)]  # no tape: staged
    jit = sorted((getattr(fn, "start", fn)._jit_compile, type(fn).__name__) for fn in cache.values())
    assert jit == [(False, "_Staged"), (True, "Function"), (True, "_Staged")], jit
    np.testing.assert_allclose(staged[0], staged[1], rtol=1e-10)
    np.testing.assert_allclose(staged[0], sol.u.numpy(), rtol=1e-10)
    with pytest.raises(TypeError, match="`compile` must be"):
        gsa.solve_ensemble(LV, p=p, compile="yes", **OPTS)


@pytest.mark.parametrize("compile_", [True, False], ids=["xla", "graph"])
def test_ensemble_gradient_reaches_variables_read_by_f(compile_):
    # u' = p W u with W a tf.Variable read inside f (a Keras-style weight): d sum_b |u_b(t1)|^2 / dW against central
    # differences of expm. In a plain graph the backward pass vectorised the adjoint solves with pfor, which failed on
    # the loop's variable handle ("Required handle data not set"); it maps them now when variables are read.
    w0 = np.array([[-0.5, 1.0], [-1.0, -0.3]])
    w = tf.Variable(w0)
    prob = sd.ODEProblem(lambda t, u, p: p[0] * tf.linalg.matvec(w, u), tf.constant([1.0, 0.0], tf.float64), (0.0, 2.0),
                         tf.constant([1.0], tf.float64))
    scales = np.array([1.0, 0.5])
    with tf.GradientTape() as tape:
        sol = gsa.solve_ensemble(prob, p=scales[:, None], sensealg=sd.BacksolveAdjoint(), rtol=1e-10, atol=1e-12,
                                 compile=compile_)
        loss = tf.reduce_sum(sol.u[:, -1] ** 2)
    grad = tape.gradient(loss, w).numpy()

    def ref_loss(m):
        return sum(np.sum((scipy.linalg.expm(m * s * 2.0) @ [1.0, 0.0]) ** 2) for s in scales)

    ref = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            e = np.zeros((2, 2))
            e[i, j] = 1e-6
            ref[i, j] = (ref_loss(w0 + e) - ref_loss(w0 - e)) / 2e-6
    np.testing.assert_allclose(grad, ref, rtol=1e-7)


def _radau_robertson(k, ts):
    def f(t, y):
        return [-k[0] * y[0] + k[2] * y[1] * y[2], k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2], k[1] * y[1] ** 2]

    return scipy.integrate.solve_ivp(f, (0.0, ts[-1]), [1.0, 0.0, 0.0], method="Radau", t_eval=ts, rtol=1e-11,
                                     atol=1e-14).y.T


def test_stiff_ensemble_default_method_retries_with_rodas5_and_differentiates():
    # Robertson, k1 per sample. With no `alg` the default method runs out of steps, as `solve` does on a stiff
    # problem, and the ensemble is solved again with Rodas5 (it used to fail every sample with MAX_STEPS). Rodas5's
    # LU had no pfor rule: an eager stiff ensemble could not run, nor could any gradient of one.
    rob = sd.models.robertson().remake(tspan=(0.0, 100.0))
    p = np.tile(np.asarray(rob.p), (3, 1))
    p[:, 0] = [0.02, 0.04, 0.08]
    ts = np.array([1.0, 100.0])
    with pytest.warns(sd.StiffnessWarning, match="solved again with Rodas5"):
        sol = gsa.solve_ensemble(rob, p=p, saveat=ts, rtol=1e-8, atol=1e-12)
    ref = np.stack([_radau_robertson(k, ts) for k in p])
    np.testing.assert_allclose(sol.u.numpy(), ref, rtol=1e-6, atol=1e-12)
    # d y2(1) / d k1 per sample, against central differences of SciPy Radau.
    short = rob.remake(tspan=(0.0, 1.0))
    fd = []
    for k in p[:2]:
        h = 1e-5 * k[0]
        up, down = k.copy(), k.copy()
        up[0] += h
        down[0] -= h
        fd.append((_radau_robertson(up, [1.0])[-1, 1] - _radau_robertson(down, [1.0])[-1, 1]) / (2 * h))
    for sensealg in (sd.InterpolatingAdjoint(), sd.QuadratureAdjoint()):
        pt = tf.constant(p[:2])
        with tf.GradientTape() as tape:
            tape.watch(pt)
            sol = gsa.solve_ensemble(short, p=pt, alg=sd.Rodas5(), saveat=[1.0], rtol=1e-9, atol=1e-13, sensealg=sensealg)
            loss = tf.reduce_sum(sol.u[:, -1, 1])
        np.testing.assert_allclose(tape.gradient(loss, pt).numpy()[:, 0], fd, rtol=1e-5, err_msg=repr(sensealg))
