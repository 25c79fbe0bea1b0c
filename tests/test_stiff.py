"""Stiff methods (Rosenbrock23, Rodas5, Kvaerno5, AutoTsit5Rodas5) against independent references.

References: SciPy ``solve_ivp(method="Radau")`` at rtol 1e-10 (with the
forward sensitivity equations integrated alongside for gradients), closed
forms (``expm`` / ``expm_frechet``) for a linear system with eigenvalues from
-1 to -1e6, and exact polynomials for the dense output (the references are
in `stiff_references.py`; Robertson's gradients with every algorithm are in
`test_stiff_sensitivities.py`). Compiled functions are shared at module
level: every trace costs seconds.
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import models
from sensode.ode import rosenbrock
from sensode.ode.linear import WithJacobian
from stiff_references import (A_STIFF, SENS_W, U0_LIN, _linear_loss, _radau, _rober_flat, _rober_jac,
                               _rober_np, _rober_sens_reference, _sens_grad, _vdp_np, assert_linear_against_expm)

STIFF = [sd.Rosenbrock23, sd.Rodas5, sd.Kvaerno5]


# ----------------------------------------------------------------- order and dense output


def _fixed_steps(method, f, y0, t0, t1, n):
    """``n`` steps of the bare method (no error control): the method's own order shows."""
    h = tf.constant((t1 - t0) / n, tf.float64)
    t = tf.constant(t0, tf.float64)
    y = [tf.constant(y0, tf.float64)]
    fy = f(t, y)
    carry = method.init(f, t, y, fy)
    for _ in range(n):
        s = method.step(f, t, y, fy, h, carry)
        t, y, fy, carry = t + h, s.y1, s.f1, s.carry
    return y[0].numpy()


@pytest.mark.parametrize("method,order", [(sd.Rosenbrock23, 2), (sd.Rodas5, 5), (sd.Kvaerno5, 5)])
def test_convergence_order(method, order):
    # Non-autonomous (exercises df/dt): u' = -lam (u - sin t) + cos t, u = sin t + u0 exp(-lam t).
    lam = np.array([1.0, 4.0])

    def f(t, y):
        return [-lam * (y[0] - tf.sin(t)) + tf.cos(t)]

    exact = np.sin(1.0) + np.exp(-lam)
    ns = [8, 16, 32]
    errs = [np.max(np.abs(_fixed_steps(method(), f, [1.0, 1.0], 0.0, 1.0, n) - exact)) for n in ns]
    slopes = -np.diff(np.log(errs)) / np.log(2.0)
    assert slopes[-1] > order - 0.4, (errs, slopes)


@pytest.mark.parametrize("method,degree", [(sd.Rosenbrock23, 2), (sd.Rodas5, 3), (sd.Kvaerno5, 3)])
def test_dense_output_reproduces_polynomials(method, degree):
    # u' = d/dt t^degree (pure quadrature): the step and its interpolant are exact.
    def f(t, y):
        return [degree * t ** (degree - 1) * tf.ones_like(y[0])]

    m = method()
    t0, h = tf.constant(0.3, tf.float64), tf.constant(0.5, tf.float64)
    y = [tf.constant([0.3**degree], tf.float64)]
    fy = f(t0, y)
    step = m.step(f, t0, y, fy, h, m.init(f, t0, y, fy))
    rows, _ = m.dense(f, t0, y, h, step)
    theta = tf.constant([0.0, 0.25, 0.7, 1.0], tf.float64)
    got = m.interpolate(theta, y, h, rows)[0].numpy()[:, 0]
    want = (0.3 + 0.5 * theta.numpy()) ** degree
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- stiff problems

ROBER_TS = np.array([1e-3, 0.1, 10.0, 1e3, 1e5])
ROBER = models.robertson()
ROBER_REF = _radau(_rober_np, [1.0, 0.0, 0.0], 1e5, ROBER_TS)


def _rober_solve(method, u0, rtol=1e-7):
    sol = sd.solve(ROBER.remake(u0=u0), method, saveat=tf.constant(ROBER_TS), rtol=rtol, atol=1e-12,
                   max_steps=5000, throw=False)
    return sol.u, sol.status, sol.stats


# rtol is an input: one compilation serves every tolerance.
_ROBER_XLA = {m: tf.function(lambda u0, rtol, m=m: _rober_solve(m(), u0, rtol), jit_compile=True) for m in STIFF}


@pytest.mark.parametrize("method", STIFF)
def test_robertson_against_radau_and_mass(method):
    u, status, stats = _ROBER_XLA[method](ROBER.u0, tf.constant(1e-7, tf.float64))
    assert int(status) == 0
    u = u.numpy()
    tol = 2e-3 if method is sd.Rosenbrock23 else 1e-4
    np.testing.assert_allclose(u, ROBER_REF, rtol=tol, atol=1e-11)
    np.testing.assert_allclose(u.sum(axis=1), 1.0, atol=1e-10)  # mass: every stage is conservative
    assert int(stats["njac"]) > 0 and int(stats["nlu"]) > 0 and int(stats["nsolve"]) >= int(stats["nlu"])
    if method is sd.Kvaerno5:
        # Its Newton tolerance follows the solve's (NEWTON_KAPPA * rtol): still accurate at rtol 1e-8.
        u8, status8, _ = _ROBER_XLA[method](ROBER.u0, tf.constant(1e-8, tf.float64))
        assert int(status8) == 0
        np.testing.assert_allclose(u8.numpy(), ROBER_REF, rtol=1.5e-5, atol=1e-13)


def test_explicit_method_fails_on_robertson_with_a_status():
    sol = sd.solve(ROBER, sd.Tsit5(), rtol=1e-6, atol=1e-10, max_steps=200, throw=False)
    assert int(sol.status) != 0


def test_default_method_retries_a_stiff_problem_with_rodas5_in_eager_mode():
    # No alg, the default max_steps: Tsit5 runs out of steps on Robertson, the solve is done again with Rodas5.
    with pytest.warns(sd.StiffnessWarning, match=r"Tsit5\(\) stopped with status 1 \(MAX_STEPS\).*Rodas5"):
        sol = sd.solve(ROBER, saveat=tf.constant(ROBER_TS), rtol=1e-7, atol=1e-12)
    assert sol.alg == sd.Rodas5() and int(sol.status) == 0
    np.testing.assert_allclose(sol.u.numpy(), ROBER_REF, rtol=1e-4, atol=1e-11)
    # An explicit budget or method is the caller's: no second attempt.
    with pytest.raises(sd.SolverError, match=r"Tsit5\(\) failed.*status 1"):
        sd.solve(ROBER, rtol=1e-7, atol=1e-12, max_steps=300)
    # Inside tf.function nothing retries: the status says what happened.
    status = tf.function(lambda: sd.solve(ROBER, rtol=1e-7, atol=1e-12, throw=False).status)()
    assert int(status) == sd.Status.MAX_STEPS


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_robertson_modes(mode):
    fn = (lambda u0: _rober_solve(sd.Rodas5(), u0)) if mode == "eager" else tf.function(
        lambda u0: _rober_solve(sd.Rodas5(), u0))
    u, status, _ = fn(ROBER.u0)
    assert int(status) == 0
    np.testing.assert_allclose(u.numpy(), ROBER_REF, rtol=1e-4, atol=1e-11)


def test_float32_rodas5_short_robertson():
    prob = models.robertson(tspan=(0.0, 10.0), dtype=tf.float32)
    ts = np.array([0.1, 1.0, 10.0])
    sol = sd.solve(prob, sd.Rodas5(), saveat=tf.constant(ts, tf.float32), rtol=1e-4, atol=1e-8)
    ref = _radau(_rober_np, [1.0, 0.0, 0.0], 10.0, ts)
    np.testing.assert_allclose(sol.u.numpy(), ref, rtol=1e-3, atol=1e-7)


def test_van_der_pol_mu_1000_against_radau():
    prob = models.van_der_pol(mu=1000.0, tspan=(0.0, 3000.0))
    ts = np.array([500.0, 1500.0, 3000.0])
    ref = _radau(_vdp_np, [2.0, 0.0], 3000.0, ts, rtol=1e-10, atol=1e-12)
    run = tf.function(lambda: sd.solve(prob, sd.Rodas5(), saveat=tf.constant(ts), rtol=1e-8, atol=1e-10,
                                       max_steps=20000, throw=False), jit_compile=True)
    sol = run()
    assert int(sol.status) == 0
    np.testing.assert_allclose(sol.u.numpy()[:, 0], ref[:, 0], rtol=1e-5, atol=1e-6)



# Reference solutions of the IVP test set (Mazzia & Magherini), also reproduced
# by SciPy Radau at rtol 1e-12 to 1e-12 relative (checked on 3 December 2026).
HIRES_REF = np.array([7.371312573325668e-4, 1.442485726316185e-4, 5.888729740967575e-5, 1.175651343283149e-3,
                      2.386356198831331e-3, 6.238968252742796e-3, 2.849998395185769e-3, 2.850001604814231e-3])
POLLU_REF = np.array([5.646255480022769e-2, 1.342484130422339e-1, 4.139734331099427e-9, 5.523140207484359e-3,
                      2.018977262302196e-7, 1.464541863493966e-7, 7.784249118997964e-2, 3.245075353396018e-1,
                      7.494013383880406e-3, 1.622293157301561e-8, 1.135863833257075e-8, 2.230505975721359e-3,
                      2.087162882798630e-4, 1.396921016840158e-5, 8.964884856898295e-3, 4.352846369330103e-18,
                      6.899219696263405e-3, 1.007803037365946e-4, 1.772146513969984e-6, 5.682943292316392e-5])


@pytest.mark.parametrize("name,ref", [("hires", HIRES_REF), ("pollution", POLLU_REF)])
def test_hires_and_pollution_against_the_test_set(name, ref):
    prob = models.PROBLEMS[name]()
    sol = sd.solve(prob, sd.Rodas5(), rtol=1e-9, atol=1e-14, max_steps=5000)
    assert int(sol.status) == 0
    np.testing.assert_allclose(sol.u[-1].numpy(), ref, rtol=1e-5, atol=3e-14)


def test_mass_action_network_matches_its_terms_one_by_one():
    # POLLU's vectorised right-hand side against the rates and sums written out term by term (batched state).
    rng = np.random.default_rng(3)
    u = rng.uniform(0.0, 1.0, (2, 20))
    k = np.asarray(models._POLLU_K)
    rates = np.stack([k[i] * np.prod(u[:, list(r)], axis=1) for i, r in enumerate(models._POLLU_R)], axis=1)
    want = np.stack([sum(c * rates[:, j] for j, c in models._POLLU_S[s]) for s in range(20)], axis=1)
    prob = models.pollution()
    got = prob.f(tf.constant(0.0, tf.float64), tf.constant(u), prob.p).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="order 3"):
        models._mass_action(((0, 1, 2),), {0: [(0, -1)]}, 3)

# Linear u' = A u with eigenvalues -1 .. -1e6 (a similarity transform of a diagonal).
@pytest.mark.parametrize("method,sensealg", [(sd.Rodas5, sd.DiscreteAdjoint), (sd.Kvaerno5, sd.DiscreteAdjoint),
                                             (sd.Rodas5, sd.ForwardSensitivity),
                                             (sd.Kvaerno5, sd.ForwardSensitivity)])
def test_linear_stiff_against_expm_and_frechet(method, sensealg):
    @tf.function(jit_compile=True)
    def grads(a, u0):
        with tf.GradientTape() as tape:
            tape.watch([a, u0])
            loss, u = _linear_loss(method(), a, u0, sensealg())
        return u, tape.gradient(loss, [a, u0])

    u, (ga, gu0) = grads(tf.constant(A_STIFF), tf.constant(U0_LIN))
    assert_linear_against_expm(u, ga, gu0)


# ----------------------------------------------------------------- forward sensitivities' linear algebra


def test_sensitivity_block_solve_equals_dense_augmented_solve():
    # Stiff methods solve (I/(gamma h) - J_aug) x = b for (u, S) through the state's n x n LU and the
    # coupling block B applied by a second-order JVP. Reference: NumPy's dense solve with the whole
    # augmented Jacobian, taken by a reverse-mode tape of the augmented right-hand side.
    from sensode.derivatives import batched_jvp, batched_jvp_derivative
    from sensode.ode import linear

    k = tf.constant([0.04, 3e7, 1e4], tf.float64)
    f = models.robertson().f
    rng = np.random.default_rng(0)
    m = 4  # directions: two in u0, two in p
    u = tf.constant([0.8, 3e-5, 0.2], tf.float64)
    s = tf.constant(rng.normal(size=(m, 3)), tf.float64)
    p_tan = [tf.constant(rng.normal(size=(m, 3)), tf.float64)]

    def aug(t, y):  # the flat view the loop hands a method: [u, S] -> [f, J S + df/dk dk]
        out, jvps = batched_jvp(f, t, y[0], k, [], y[1], p_tan, [])
        return [out, jvps]

    system = linear.SensitivitySystem(aug, lambda t, u_: f(t, u_, k), None,
                                      lambda t, u_, s_, x: batched_jvp_derivative(f, t, u_, k, [], s_, p_tan, [], x))
    layout = linear.Layout([u, s])
    g = lambda t, v: layout.vec(aug(t, layout.unvec(v)))
    t, inv_gh = tf.constant(0.3, tf.float64), tf.constant(1e3, tf.float64)
    yv = layout.vec([u, s])
    b = tf.constant(rng.normal(size=layout.size), tf.float64)
    x = tf.function(lambda: linear.SensitivityFactorised(system, layout, t, yv, inv_gh).solve(b))()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(yv)
        out = g(t, yv)
    j_aug = tape.jacobian(out, yv, experimental_use_pfor=False).numpy()
    want = np.linalg.solve(inv_gh.numpy() * np.eye(layout.size) - j_aug, b.numpy())
    assert np.abs(j_aug[3:, :3]).max() > 1.0  # B is not zero here: the coupling is exercised
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("method", [sd.Rodas5, sd.Kvaerno5])
def test_singular_first_step_is_rejected_and_gradients_stay_finite(method):
    # u' = lam u with the first step h0 = 1 / (gamma lam): M = I/(gamma h0) - J is exactly zero. That
    # attempt fails and is rejected; the rest of the solve succeeds, and the discrete adjoint's gradient
    # (through the rejected branch's zero cotangent) is the closed form, not NaN (0 * NaN).
    from sensode.ode import sdirk

    lam, t1 = 1.0, 10.0
    gamma = rosenbrock.Rodas5.gamma if method is sd.Rodas5 else sdirk._GAMMA
    h0 = 1.0 / (gamma * lam)

    @tf.function(jit_compile=True)
    def run(lam_, u0):
        with tf.GradientTape() as tape:
            tape.watch([lam_, u0])
            prob = sd.ODEProblem(lambda t, u, p: p * u, u0, (0.0, t1), lam_)
            sol = sd.solve(prob, method(), dt=h0, saveat=tf.constant([t1], tf.float64), rtol=1e-8, atol=1e-10,
                           sensealg=sd.DiscreteAdjoint(), throw=False)
            loss = tf.reduce_sum(sol.u[-1])
        f = lambda t, y: [lam_ * y[0]]  # noqa: E731  one bare step at h0: it fails
        t0, y0 = tf.constant(0.0, tf.float64), [u0]
        m = method()
        step = m.step(f, t0, y0, f(t0, y0), tf.constant(h0, tf.float64), m.init(f, t0, y0, f(t0, y0)))
        return sol.u, tape.gradient(loss, [lam_, u0]), sol.status, step.err[0]

    u, (g_lam, g_u0), status, err = run(tf.constant(lam, tf.float64), tf.constant([1.0], tf.float64))
    assert not np.all(np.isfinite(err.numpy()))  # the first attempt is a failure (NaN / inf error)
    assert int(status) == 0
    want = np.exp(lam * t1)
    np.testing.assert_allclose(u.numpy()[-1], [want], rtol=1e-6)
    np.testing.assert_allclose([g_lam.numpy(), g_u0.numpy()[0]], [t1 * want, want], rtol=1e-6)


# ----------------------------------------------------------------- a user-supplied Jacobian


@pytest.mark.parametrize("method", [sd.Rodas5, sd.Kvaerno5])  # Rosenbrock23 shares Rodas5's path
def test_user_jacobian_step_equals_ad(method):
    # The loop hands methods a `WithJacobian` right-hand side when the problem has `jac`: the step
    # then calls it (and only it) for df/du, and takes the same step as with the AD Jacobian.
    calls = []
    jac = _rober_jac(calls=calls)
    k = tf.constant([0.04, 3e7, 1e4], tf.float64)
    with_jac = WithJacobian(_rober_flat, lambda t, y: jac(t, y[0], k))
    approx = WithJacobian(_rober_flat, lambda t, y: 1.2 * jac(t, y[0], k))
    fns = (_rober_flat, with_jac) + ((approx,) if method is sd.Kvaerno5 else ())

    @tf.function  # one graph for all steps (cheaper than one eager step function each)
    def steps():
        t, h = tf.constant(0.0, tf.float64), tf.constant(1e-3, tf.float64)
        y = [tf.constant([0.9, 2e-5, 0.1], tf.float64)]
        out = []
        for fn in fns:
            m = method()
            fy = fn(t, y)
            s = m.step(fn, t, y, fy, h, m.init(fn, t, y, fy))
            out.append((s.y1[0], m.stats(s.carry)))
        return out

    (y_ad, st_ad), (y_j, st_j), *rest = steps()
    assert calls
    np.testing.assert_allclose(y_j.numpy(), y_ad.numpy(), rtol=1e-12, atol=1e-18)
    assert {k: int(v) for k, v in st_j.items()} == {k: int(v) for k, v in st_ad.items()}
    assert int(st_j["njac"]) == 1
    if rest:
        # Kvaerno5 needs J only as a Newton matrix: a 20% wrong one costs iterations, not accuracy.
        y_ap, st_ap = rest[0]
        assert int(st_ap["nsolve"]) > int(st_ad["nsolve"])
        np.testing.assert_allclose(y_ap.numpy(), y_ad.numpy(), rtol=1e-8, atol=1e-14)


def test_user_jacobian_solve_against_radau():
    # Through `solve` (tf.function): Rodas5 and Kvaerno5 with Robertson's analytic Jacobian.
    calls = []
    prob = ROBER.remake(jac=_rober_jac(calls=calls))

    @tf.function
    def run():
        sols = [sd.solve(prob, m, saveat=tf.constant(ROBER_TS), rtol=1e-7, atol=1e-12, max_steps=5000, throw=False)
                for m in (sd.Rodas5(), sd.Kvaerno5())]
        return [(s.u, s.status, s.stats) for s in sols]

    for u, status, stats in run():
        assert int(status) == 0 and int(stats["njac"]) == int(stats["steps"])
        np.testing.assert_allclose(u.numpy(), ROBER_REF, rtol=1e-4, atol=1e-11)
    assert calls


def test_user_jacobian_errors():
    with pytest.raises(TypeError, match="`jac` must be callable"):
        sd.ODEProblem(lambda t, u, p: -u, tf.constant([1.0], tf.float64), (0.0, 1.0), jac=3.0)
    wrong = ROBER.remake(tspan=(0.0, 1.0), jac=lambda t, u, p: tf.zeros([3, 2], tf.float64))
    with pytest.raises(ValueError, match=r"`jac` returned shape \(3, 2\).*\[3, 3\]"):
        sd.solve(wrong, sd.Rodas5(), compile=False)
    batched = models.robertson(u0=tf.zeros([2, 3], tf.float64), tspan=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"`jac`.*\[6, 6\].*blocks \[2, 3, 3\]"):
        sd.solve(batched.remake(jac=lambda t, u, p: tf.zeros([3, 3], tf.float64)), sd.Kvaerno5(), compile=False)
    with pytest.raises(TypeError, match="`jac` returned dtype float32"):
        sd.solve(ROBER.remake(jac=lambda t, u, p: tf.zeros([3, 3], tf.float32)), sd.Rodas5(), compile=False)
    # A [2, 3] state: jac may return the per-system blocks [2, 3, 3] (assembled block-diagonally).
    u0 = tf.constant([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]], tf.float64)
    sol = sd.solve(models.robertson(u0=u0, tspan=(0.0, 1.0)).remake(jac=_rober_jac()), sd.Rodas5(), rtol=1e-8,
                   atol=1e-12, compile=False)
    ref = _radau(_rober_np, [0.5, 0.0, 0.5], 1.0, [1.0])[0]
    np.testing.assert_allclose(sol.u.numpy()[-1, 1], ref, rtol=1e-6, atol=1e-12)


JAC_TS = np.array([0.1, 0.5, 1.0])
JAC_REF = np.einsum("tij,i->j", _rober_sens_reference(1.0, JAC_TS), SENS_W)
_GRAD_JAC_CALLS = []
ROBER_LOG_J = models.robertson(log_rates=True, tspan=(0.0, 1.0)).remake(
    jac=_rober_jac(log_rates=True, calls=_GRAD_JAC_CALLS))


@pytest.mark.parametrize("sensealg", [sd.ForwardSensitivity, sd.DiscreteAdjoint, sd.InterpolatingAdjoint])
def test_user_jacobian_gradients(sensealg):
    # d u / d log k with jac given: the W matrices (of the augmented system for forward sensitivities,
    # -J^T for the backward adjoint solve) come from jac; the discrete adjoint differentiates through it.
    del _GRAD_JAC_CALLS[:]
    g = _sens_grad(sd.Rodas5(), sensealg(), prob=ROBER_LOG_J, ts=JAC_TS)
    assert _GRAD_JAC_CALLS
    np.testing.assert_allclose(g, JAC_REF, rtol=1e-6)


# ----------------------------------------------------------------- automatic switching


def test_auto_switches_on_robertson_and_not_on_lotka_volterra():
    u, status, stats = tf.function(lambda: _rober_solve(sd.AutoTsit5Rodas5(), ROBER.u0), jit_compile=True)()
    assert int(status) == 0 and int(stats["switches"]) >= 1 and int(stats["stiff_steps"]) > 0
    np.testing.assert_allclose(u.numpy(), ROBER_REF, rtol=1e-4, atol=1e-11)
    # Non-stiff: exactly Tsit5's steps and values (the dense output flag selects Tsit5's interpolant).
    prob = models.lotka_volterra()
    ts = tf.constant(np.linspace(0.0, 10.0, 7))
    auto = sd.solve(prob, sd.AutoTsit5Rodas5(), saveat=ts, rtol=1e-6, atol=1e-8)
    tsit = sd.solve(prob, sd.Tsit5(), saveat=ts, rtol=1e-6, atol=1e-8)
    assert int(auto.stats["switches"]) == 0 and int(auto.stats["steps"]) == int(tsit.stats["steps"])
    np.testing.assert_allclose(auto.u.numpy(), tsit.u.numpy(), rtol=1e-12)


def test_auto_on_van_der_pol_graph_mode():
    # Outside XLA the stiff branch runs behind a non-inlined call: same answer as Radau.
    prob = models.van_der_pol(mu=1000.0, tspan=(0.0, 1.0))
    ts = np.array([0.5, 1.0])
    sol = tf.function(lambda: sd.solve(prob, sd.AutoTsit5Rodas5(), saveat=tf.constant(ts), rtol=1e-8, atol=1e-10,
                                       throw=False))()
    assert int(sol.status) == 0 and int(sol.stats["switches"]) >= 1, sol.stats
    assert int(sol.stats["stiff_steps"]) > 0, sol.stats
    ref = _radau(_vdp_np, [2.0, 0.0], 1.0, ts, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(sol.u.numpy(), ref, rtol=1e-6, atol=1e-8)


def test_batched_state_and_errors():
    # A batch [B, 3] is one system of 3B unknowns: each row matches the single solve.
    u0 = tf.constant([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]], tf.float64)
    # Op by op (the eager step is one graph function): no XLA compilation for this one solve.
    sol = sd.solve(models.robertson(u0=u0, tspan=(0.0, 1.0)), sd.Rodas5(), rtol=1e-8, atol=1e-12, compile=False)
    ref = _radau(_rober_np, [0.5, 0.0, 0.5], 1.0, [1.0])
    np.testing.assert_allclose(sol.u.numpy()[-1, 1], ref[0], rtol=1e-6, atol=1e-12)
    # The eager step functions die with their right-hand sides (this solve's, and those the tests above
    # stepped eagerly): nothing keeps the user's f alive (AutoGraph's conversion cache once did).
    gc.collect()
    assert len(rosenbrock._EAGER_STEPS) == 0, list(rosenbrock._EAGER_STEPS.keys())
    with pytest.raises(ValueError, match="max_newton"):
        sd.Kvaerno5(max_newton=0)
