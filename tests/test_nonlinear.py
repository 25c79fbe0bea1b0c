"""Nonlinear and steady-state solves and their implicit adjoint.

References are independent of the code under test: closed forms (the two
worked examples of the notes, linear steady states), numpy, and central
finite differences of the solution map.
"""

import numpy as np
import pytest
import tensorflow as tf

import sensode as so
from sensode import linsolve as ls

MODES = ["eager", "function", "xla"]


def run(mode, fn, *args):
    if mode == "eager":
        return fn(*args)
    return tf.function(fn, jit_compile=(mode == "xla"))(*args)


# ----------------------------------------------------------------------------- worked examples
# Example 1: u = [p1^2 + p2, p1 p2], g = u1 + u2^2, as the residual f = u - h(p).


def ex1_residual(u, p):
    return u - tf.stack([p[0] ** 2 + p[1], p[0] * p[1]])


def ex1_fixed_point(u, p):  # the same problem stated as u = g(u, p): residual g - u
    return tf.stack([p[0] ** 2 + p[1], p[0] * p[1]]) - u


def ex1_exact(p1, p2):
    u = np.array([p1**2 + p2, p1 * p2])
    grad = np.array([2 * p1 + 2 * p1 * p2**2, 1 + 2 * p1**2 * p2])  # dg/dp by the chain rule
    return u, grad


# Example 2: f1 = u1 + u2 + p1, f2 = u1^3 - u2 + p2, g = u1^2 + u2^2.


def ex2_residual(u, p):
    return tf.stack([u[..., 0] + u[..., 1] + p[..., 0], u[..., 0] ** 3 - u[..., 1] + p[..., 1]], axis=-1)


def ex2_exact(p1, p2):
    # u1 solves u1^3 + u1 + (p1 + p2) = 0 (Cardano, one real root); u2 = u1^3 + p2.
    s = p1 + p2
    q = np.sqrt(s**2 / 4 + 1 / 27)
    u1 = np.cbrt(-s / 2 + q) + np.cbrt(-s / 2 - q)
    u2 = u1**3 + p2
    d = 1 + 3 * u1**2  # implicit function theorem: du/dp = [[-1, -1], [-3 u1^2, 1]] / d
    du_dp = np.array([[-1.0, -1.0], [-3 * u1**2, 1.0]]) / d
    grad = 2 * u1 * du_dp[0] + 2 * u2 * du_dp[1]
    return np.array([u1, u2]), grad, du_dp


SENSEALGS = [so.DiscreteAdjoint(), so.SteadyStateAdjoint(linsolve=ls.GMRES()), so.ForwardSensitivity()]
ALGS = [so.NewtonRaphson(), so.NewtonKrylov(), so.NewtonRaphson(linsolve=ls.BiCGStab(), line_search=False)]


def value_and_grad(residual, u0, p, alg, sensealg, loss, **kw):
    p = tf.constant(p, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(p)
        sol = so.solve(so.NonlinearProblem(residual, tf.constant(u0, tf.float64), p), alg, sensealg=sensealg, **kw)
        g = loss(sol.u)
    return sol, tape.gradient(g, p).numpy()


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("alg", ALGS, ids=["newton", "newton-krylov", "newton-bicgstab"])
def test_example1(alg, sensealg):
    p1, p2 = 1.5, -0.7
    sol, grad = value_and_grad(ex1_residual, [0.0, 0.0], [p1, p2], alg, sensealg, lambda u: u[0] + u[1] ** 2)
    u, expected = ex1_exact(p1, p2)
    np.testing.assert_allclose(sol.u.numpy(), u, rtol=1e-12)
    np.testing.assert_allclose(grad, expected, rtol=1e-9)


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("alg", ALGS, ids=["newton", "newton-krylov", "newton-bicgstab"])
def test_example2(alg, sensealg):
    p1, p2 = 1.0, 2.0
    sol, grad = value_and_grad(ex2_residual, [0.0, 0.0], [p1, p2], alg, sensealg, lambda u: tf.reduce_sum(u**2))
    u, expected, du_dp = ex2_exact(p1, p2)
    np.testing.assert_allclose(sol.u.numpy(), u, rtol=1e-10)
    np.testing.assert_allclose(grad, expected, rtol=1e-9)
    assert int(sol.status) == so.Status.SUCCESS and sol.message == "success"
    if isinstance(sensealg, so.ForwardSensitivity):
        np.testing.assert_allclose(sol.du_dp.numpy(), du_dp, rtol=1e-9)
    else:
        assert sol.du_dp is None


def test_anderson_fixed_point_form():
    p1, p2 = 0.8, 0.3
    for residual in (ex1_fixed_point, ex1_residual):  # the map u + f is a contraction only for the first
        alg = so.AndersonAcceleration(memory=3) if residual is ex1_fixed_point else so.NewtonRaphson()
        sol, grad = value_and_grad(residual, [0.0, 0.0], [p1, p2], alg, None, lambda u: u[0] + u[1] ** 2)
        u, expected = ex1_exact(p1, p2)
        np.testing.assert_allclose(sol.u.numpy(), u, rtol=1e-10)
        np.testing.assert_allclose(grad, expected, rtol=1e-9)


def test_anderson_nonlinear_contraction_against_newton():
    # u = 0.5 cos(u) + p: a contraction; Picard (memory 0) and Anderson agree with Newton.
    def residual(u, p):
        return 0.5 * tf.cos(u) + p - u

    p = tf.constant([0.1, 0.7, -2.0], tf.float64)
    sols = [
        so.solve(so.NonlinearProblem(residual, tf.zeros(3, tf.float64), p), alg)
        for alg in (so.NewtonRaphson(), so.AndersonAcceleration(memory=0), so.AndersonAcceleration(memory=4))
    ]
    for sol in sols[1:]:
        np.testing.assert_allclose(sol.u.numpy(), sols[0].u.numpy(), rtol=1e-9)
    assert int(sols[2].iterations) < int(sols[1].iterations)  # acceleration helps
    # Implicit gradient of sum(u): du_i/dp_i = 1 / (1 + 0.5 sin(u_i)).
    with tf.GradientTape() as tape:
        tape.watch(p)
        u = so.solve(so.NonlinearProblem(residual, tf.zeros(3, tf.float64), p), so.AndersonAcceleration()).u
        g = tf.reduce_sum(u)
    np.testing.assert_allclose(tape.gradient(g, p).numpy(), 1 / (1 + 0.5 * np.sin(u.numpy())), rtol=1e-8)


# ----------------------------------------------------------------------------- modes and dtypes


CASES = {
    "newton-lu": (so.NewtonRaphson(), so.DiscreteAdjoint()),
    "krylov-gmres": (so.NewtonKrylov(), so.DiscreteAdjoint(linsolve=ls.GMRES())),
    "anderson-forward": (so.AndersonAcceleration(), so.ForwardSensitivity()),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_modes_and_dtypes(mode, dtype, case):
    alg, sensealg = CASES[case]
    p1, p2 = 1.0, 2.0
    residual = ex2_residual if case != "anderson-forward" else (lambda u, p: -ex2_residual(u, p) * 0.5)
    if case == "anderson-forward":  # a contraction needs a different problem: the fixed point u = 0.5 cos(u) + p
        residual = lambda u, p: 0.5 * tf.cos(u) + p - u  # noqa: E731

    def fn(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = so.solve(so.NonlinearProblem(residual, tf.zeros([2], dtype), p), alg, sensealg=sensealg, max_iters=60)
            g = tf.reduce_sum(sol.u**2)
        return sol.u, tape.gradient(g, p), sol.status

    u, grad, status = run(mode, fn, tf.constant([p1, p2], dtype))
    assert u.dtype == dtype and grad.dtype == dtype and int(status) == 0
    tol = 1e-9 if dtype == tf.float64 else 2e-4
    if case == "anderson-forward":
        un = u.numpy().astype(np.float64)
        expected = 2 * un / (1 + 0.5 * np.sin(un))
    else:
        _, expected, _ = ex2_exact(p1, p2)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- steady states


def linear_system(n=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) * 0.3 - 2.0 * np.eye(n)  # eigenvalues in the left half plane
    return a, rng.normal(size=n), rng.normal(size=n)


@pytest.mark.parametrize("alg", [so.NewtonRaphson(), so.DynamicSS(rtol=1e-10, atol=1e-12)], ids=["newton", "dynamicss"])
def test_linear_steady_state_exact_gradients(alg):
    a, b, w = linear_system()
    params = {"A": tf.constant(a), "b": tf.constant(b)}

    def rhs(t, u, p):
        return tf.linalg.matvec(p["A"], u) + p["b"]

    @tf.function
    def fn(params):
        with tf.GradientTape() as tape:
            tape.watch(params)
            sol = so.solve(so.SteadyStateProblem(rhs, tf.zeros(4, tf.float64), params), alg, abstol=1e-11, reltol=1e-11)
            loss = tf.reduce_sum(tf.constant(w) * sol.u)
        return sol.u, tape.gradient(loss, params)

    u, grads = fn(params)
    u_star = -np.linalg.solve(a, b)
    lam = np.linalg.solve(a.T, w)  # L = w.u*, u* = -A^-1 b: dL/db = -A^-T w, dL/dA = -(A^-T w) u*^T
    rtol = 1e-9 if isinstance(alg, so.NewtonRaphson) else 1e-7
    np.testing.assert_allclose(u.numpy(), u_star, rtol=rtol)
    np.testing.assert_allclose(grads["b"].numpy(), -lam, rtol=rtol)
    np.testing.assert_allclose(grads["A"].numpy(), -np.outer(lam, u_star), rtol=rtol)


def reaction_network(t, u, k):
    """0 -> A (k0), 2A <-> B (k1, k2), B -> C (k3), C -> 0 (k4), A -> 0 (k5); mass action."""
    a, b, c = u[0], u[1], u[2]
    return tf.stack(
        [
            k[0] - 2 * k[1] * a**2 + 2 * k[2] * b - k[5] * a,
            k[1] * a**2 - k[2] * b - k[3] * b,
            k[3] * b - k[4] * c,
        ]
    )


def test_reaction_network_against_finite_differences():
    k = np.array([1.0, 0.5, 0.3, 0.8, 0.4, 0.2])
    weights = tf.constant([1.0, -2.0, 0.5], tf.float64)

    def steady(kv, alg=so.NewtonRaphson(), tol=1e-13):
        prob = so.SteadyStateProblem(reaction_network, tf.ones(3, tf.float64), kv)
        return so.solve(prob, alg, abstol=tol, reltol=tol).u

    kt = tf.constant(k)
    with tf.GradientTape() as tape:
        tape.watch(kt)
        loss = tf.reduce_sum(weights * steady(kt) ** 2)
    grad = tape.gradient(loss, kt).numpy()
    fd = np.zeros_like(k)
    loss_fn = tf.function(lambda kv: tf.reduce_sum(weights * steady(kv) ** 2))  # traced once
    h = 1e-6
    for i in range(len(k)):
        e = np.eye(len(k))[i] * h
        lp = loss_fn(tf.constant(k + e)).numpy()
        lm = loss_fn(tf.constant(k - e)).numpy()
        fd[i] = (lp - lm) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # Time integration reaches the same (stable) steady state (in a graph: the
    # stepping loop is slow eagerly).
    u_dyn = tf.function(lambda k: steady(k, so.DynamicSS(rtol=1e-10, atol=1e-12), tol=1e-10))(kt)
    np.testing.assert_allclose(u_dyn.numpy(), steady(kt).numpy(), rtol=1e-8)


# ----------------------------------------------------------------------------- large sparse problem


def test_matrix_free_solvers_match_lu_on_1000_unknowns():
    n = 1000
    prob = so.models.reaction_diffusion_steady_state(n)
    residual, params = prob.f, prob.p
    weights = tf.constant(np.random.default_rng(0).normal(size=n))

    @tf.function
    def value_and_grads(alg, sensealg):
        with tf.GradientTape() as tape:
            tape.watch(params)
            sol = so.solve(so.NonlinearProblem(residual, tf.zeros(n, tf.float64), params), alg, sensealg=sensealg, abstol=1e-9, reltol=1e-12)
            loss = tf.reduce_sum(weights * sol.u)
        return sol.u, tape.gradient(loss, params), sol.status

    u_ref, g_ref, status = value_and_grads(so.NewtonRaphson(), so.DiscreteAdjoint())
    assert int(status) == 0
    # Newton-Krylov forward; GMRES / BiCGStab / CG adjoints (the Jacobian is SPD).
    for alg, sensealg in [
        (so.NewtonKrylov(), so.DiscreteAdjoint(linsolve=ls.GMRES())),
        (so.NewtonKrylov(linsolve=ls.CG()), so.DiscreteAdjoint(linsolve=ls.BiCGStab())),
        (so.NewtonRaphson(), so.DiscreteAdjoint(linsolve=ls.CG())),
    ]:
        u, g, status = value_and_grads(alg, sensealg)
        assert int(status) == 0
        np.testing.assert_allclose(u.numpy(), u_ref.numpy(), rtol=1e-8, atol=1e-10)
        for key in ("D", "k", "s"):
            np.testing.assert_allclose(g[key].numpy(), g_ref[key].numpy(), rtol=1e-6, atol=1e-10)
    # dL/ds = lam, with J^T lam = w: check one entry against the dense numpy Jacobian.
    h = 1.0 / (n + 1)
    lap = (np.diag(np.full(n - 1, 1.0), -1) - 2 * np.eye(n) + np.diag(np.full(n - 1, 1.0), 1)) / h**2
    jac = -1e-4 * lap + np.diag(10.0 + 3 * u_ref.numpy() ** 2)
    np.testing.assert_allclose(g_ref["s"].numpy(), np.linalg.solve(jac.T, weights.numpy()), rtol=1e-8)


# ----------------------------------------------------------------------------- parameters


def test_variable_inside_f_and_nested_p():
    p1, p2 = 1.0, 2.0
    v = tf.Variable(p1, dtype=tf.float64)

    def residual(u, p):
        return tf.stack([u[0] + u[1] + v, u[0] ** 3 - u[1] + p["b"][0]])

    p = {"b": [tf.constant(p2, tf.float64)], "unused": tf.constant(3.0, tf.float64)}

    def fn():
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = so.solve(so.NonlinearProblem(residual, tf.zeros(2, tf.float64), p))
            g = tf.reduce_sum(sol.u**2)
        return tape.gradient(g, [v, p])

    _, expected, _ = ex2_exact(p1, p2)
    for mode in ("eager", "function"):
        gv, gp = run(mode, fn)
        np.testing.assert_allclose([gv.numpy(), gp["b"][0].numpy()], expected, rtol=1e-9)
        assert gp["unused"].numpy() == 0.0


def test_variable_as_p_leaf_and_forward_sensitivity_variables():
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    with tf.GradientTape() as tape:
        sol = so.solve(so.NonlinearProblem(ex2_residual, tf.zeros(2, tf.float64), v), sensealg=so.ForwardSensitivity())
        g = tf.reduce_sum(sol.u**2)
    _, expected, du_dp = ex2_exact(1.0, 2.0)
    np.testing.assert_allclose(tape.gradient(g, v).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(sol.du_dp.numpy(), du_dp, rtol=1e-9)

    w = tf.Variable(2.0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        sol = so.solve(
            so.NonlinearProblem(lambda u, p: ex2_residual(u, tf.stack([p, w])), tf.zeros(2, tf.float64), tf.constant(1.0, tf.float64)),
            sensealg=so.ForwardSensitivity(),
        )
        g = tf.reduce_sum(sol.u**2)
    np.testing.assert_allclose(tape.gradient(g, w).numpy(), expected[1], rtol=1e-9)


def test_gradient_with_respect_to_u0_is_zero_not_none():
    u0 = tf.constant([0.3, -0.2], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(u0)
        u = so.solve(so.NonlinearProblem(ex2_residual, u0, tf.constant([1.0, 2.0], tf.float64))).u
        g = tf.reduce_sum(u**2)
    grad = tape.gradient(g, u0)
    assert grad is not None
    np.testing.assert_array_equal(grad.numpy(), 0.0)


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_batched_systems(mode):
    ps = np.array([[1.0, 2.0], [-0.5, 0.3], [2.0, -4.0], [0.0, 0.0], [3.0, 1.0], [0.1, 0.2]])

    def fn(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = so.solve(so.NonlinearProblem(ex2_residual, tf.zeros([2, 3, 2], tf.float64), p))
            g = tf.reduce_sum(sol.u**2)
        return sol.u, tape.gradient(g, p), sol.resid_norm

    u, grad, resid = run(mode, fn, tf.constant(ps.reshape(2, 3, 2)))
    assert u.shape == (2, 3, 2) and resid.shape == (2, 3)
    for i, (p1, p2) in enumerate(ps):
        ue, ge, _ = ex2_exact(p1, p2)
        np.testing.assert_allclose(u.numpy().reshape(6, 2)[i], ue, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad.numpy().reshape(6, 2)[i], ge, rtol=1e-9, atol=1e-12)


def test_batched_jacobian_is_blockwise():
    calls = []

    def residual(u, p):
        calls.append(u.shape)
        return ex2_residual(u, p)

    op = ls.JacobianOperator(lambda u: residual(u, tf.constant([[1.0, 2.0]] * 5, tf.float64)), tf.ones([5, 2], tf.float64))
    assert op.dense().shape == (5, 2, 2)


def test_scalar_unknown():
    p = tf.constant(2.0, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(p)
        sol = so.solve(so.NonlinearProblem(lambda u, p: u**2 - p, tf.constant(1.0, tf.float64), p))
    assert sol.u.shape == () and sol.resid_norm.shape == ()
    np.testing.assert_allclose(sol.u.numpy(), np.sqrt(2.0), rtol=1e-10)
    np.testing.assert_allclose(tape.gradient(sol.u, p).numpy(), 0.5 / np.sqrt(2.0), rtol=1e-10)


# ----------------------------------------------------------------------------- failures


def test_max_iters():
    prob = so.NonlinearProblem(ex2_residual, tf.zeros(2, tf.float64), tf.constant([1.0, 2.0], tf.float64))
    with pytest.raises(so.SolverError, match="max_iters") as info:
        so.solve(prob, max_iters=2)
    assert info.value.status == so.Status.MAX_ITERS
    sol = so.solve(prob, max_iters=2, throw=False)
    assert int(sol.status) == so.Status.MAX_ITERS and int(sol.iterations) == 2
    status = tf.function(lambda: so.solve(prob, max_iters=2).status)()  # graphs never raise
    assert int(status) == so.Status.MAX_ITERS


@pytest.mark.parametrize("mode", MODES)
def test_singular_jacobian(mode):
    def residual(u, p):  # inconsistent and singular: rows [1, 1] and [2, 2]
        return tf.stack([u[0] + u[1] - p, 2 * u[0] + 2 * u[1] - 3 * p])

    prob = so.NonlinearProblem(residual, tf.zeros(2, tf.float64), tf.constant(1.0, tf.float64))
    status = run(mode, lambda: so.solve(prob, throw=False).status)
    assert int(status) == so.Status.SINGULAR
    if mode == "eager":
        with pytest.raises(so.SolverError, match="singular"):
            so.solve(prob)


def test_nonfinite():
    prob = so.NonlinearProblem(lambda u, p: u + tf.math.log(p - 2.0), tf.zeros(1, tf.float64), tf.constant(1.0, tf.float64))
    with pytest.raises(so.SolverError, match="non-finite") as info:
        so.solve(prob)
    assert info.value.status == so.Status.NONFINITE
    # Divergence to infinity during the iterations: u <- u + exp(u) + 1.
    prob = so.NonlinearProblem(lambda u, p: tf.exp(u) + p, tf.zeros(1, tf.float64), tf.constant(1.0, tf.float64))
    sol = so.solve(prob, so.AndersonAcceleration(memory=0), throw=False, max_iters=50)
    assert int(sol.status) == so.Status.NONFINITE


def test_dynamicss_failures():
    growth = so.SteadyStateProblem(lambda t, u, p: p * u, tf.ones(1, tf.float64), tf.constant(1.0, tf.float64))
    status = tf.function(lambda: so.solve(growth, so.DynamicSS(max_steps=200), throw=False, max_iters=20).status)()
    assert int(status) in (so.Status.NONFINITE, so.Status.MAX_STEPS, so.Status.DT_MIN)
    slow = so.SteadyStateProblem(lambda t, u, p: -p * u, tf.ones(1, tf.float64), tf.constant(1e-3, tf.float64))
    with pytest.raises(so.SolverError) as info:
        so.solve(slow, so.DynamicSS(), max_iters=3)
    assert info.value.status == so.Status.MAX_ITERS


def backward_singular_problem():
    # f = (u - p)^2 with u0 = p: converged at iteration 0, but df/du = 0 at the root.
    p = tf.constant([1.0], tf.float64)
    return so.NonlinearProblem(lambda u, p: (u - p) ** 2, tf.constant([1.0], tf.float64), p), p


@pytest.mark.parametrize("mode", MODES)
def test_singular_backward_solve(mode):
    prob, p = backward_singular_problem()

    def fn(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            u = so.solve(so.NonlinearProblem(prob.f, prob.u0, p)).u
        return tape.gradient(u, p)

    if mode == "eager":
        with pytest.raises(so.SolverError, match="singular"):
            fn(p)
    elif mode == "function":
        with pytest.raises(tf.errors.InvalidArgumentError, match="singular"):
            run(mode, fn, p)
    else:  # XLA drops assertions: the gradient is NaN, never a silent number
        assert np.isnan(run(mode, fn, p).numpy()).all()


def test_invalid_inputs():
    prob = so.NonlinearProblem(ex2_residual, tf.zeros(2, tf.float64), tf.constant([1.0, 2.0], tf.float64))
    with pytest.raises(TypeError, match="SteadyStateProblem"):
        so.solve(prob, so.DynamicSS())
    with pytest.raises(TypeError, match="alg"):
        so.solve(prob, so.Tsit5())
    with pytest.raises(TypeError):
        so.solve(prob, saveat=[0.0, 1.0])
    with pytest.raises(TypeError, match="sensealg"):
        so.solve(prob, sensealg=so.BacksolveAdjoint())
    with pytest.raises(ValueError, match="checkpoints"):
        so.solve(prob, sensealg=so.DiscreteAdjoint(checkpoints=3))
    with pytest.raises(ValueError, match="max_iters"):
        so.solve(prob, max_iters=0)
    with pytest.raises(ValueError, match="abstol"):
        so.solve(prob, abstol=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        so.solve(so.NonlinearProblem(ex2_residual, tf.zeros(2, tf.float64), tf.constant([1.0, 2.0], tf.float32)))
    with pytest.raises(ValueError, match="shape"):
        so.solve(so.NonlinearProblem(lambda u, p: u[:1], tf.zeros(2, tf.float64)))
    with pytest.raises(TypeError, match="matrix-free"):
        so.NewtonKrylov(linsolve=ls.LU())
    with pytest.raises(ValueError, match="memory"):
        so.AndersonAcceleration(memory=-1)
    # The ODE path still rejects nonlinear options.
    with pytest.raises(TypeError):
        so.solve(so.ODEProblem(lambda t, u, p: -u, tf.ones(1), (0.0, 1.0)), max_iters=3)


def test_eager_calls_reuse_one_compiled_function():
    # Called eagerly, the iterations and the backward solve run as cached XLA functions: a second call with new
    # values traces nothing (each call traced a new graph before: ~0.5 s per 3-unknown solve, ~1 ms now).
    from sensode.nonlinear import implicit

    def f(u, p):
        return u**3 + p[0] * u - p[1]

    implicit._COMPILED.clear()
    u0 = tf.constant([1.0, 2.0, 0.5], tf.float64)
    for a, b in [(2.0, 3.0), (1.0, 2.0), (3.0, 4.0)]:  # root u = 1 for each
        p = tf.constant([a, b], tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(p)
            u = so.solve(so.NonlinearProblem(f, u0, p)).u
            loss = tf.reduce_sum(u)
        np.testing.assert_allclose(u.numpy(), 1.0, rtol=1e-9)
        # du/da = -u / (3 u^2 + a), du/db = 1 / (3 u^2 + a), summed over the three rows
        np.testing.assert_allclose(tape.gradient(loss, p).numpy(), [-3.0 / (3.0 + a), 3.0 / (3.0 + a)], rtol=1e-8)
    functions = list(implicit._COMPILED.items())
    assert [k[1] for k, _ in functions] == [True, True]  # compiled: the forward iterations and the adjoint VJP
    assert all(fn.experimental_get_tracing_count() == 1 for _, fn in functions)
    # A NumPy parameter vector is an input too: new values (and the array in place of the tensor) reuse the function.
    for a in (1.5, 2.5):
        u = so.solve(so.NonlinearProblem(f, u0, np.array([a, 1.0 + a]))).u
        np.testing.assert_allclose(u.numpy(), 1.0, rtol=1e-9)
    assert len(implicit._COMPILED) == 2 and all(fn.experimental_get_tracing_count() == 1 for fn in implicit._COMPILED.values())
    so.solve(so.NonlinearProblem(f, u0, p), compile=False)
    assert sum(not k[1] for k in implicit._COMPILED) == 1
