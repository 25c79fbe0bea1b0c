"""Stiff methods with a block-diagonal Jacobian (``linsolve=BlockDiagonalLU(b)``) against independent references.

Robertson's kinetics in three independent groups, a state ``[3, 3]`` (the
groups share the rate constants but start from different states), so the
Jacobian is block diagonal with 3 x 3 blocks. References: SciPy
``solve_ivp(method="Radau")`` at rtol 1e-11 on each group's state and its
forward sensitivity equations (d u / d log k), NumPy for the linear algebra,
the analytic Robertson Jacobian for the coloured forward-mode Jacobian.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import models
from sensode.ode import linear
from stiff_references import _rober_jac, _rober_sens_reference

BlockLU = sd.linsolve.BlockDiagonalLU
U0 = np.array([[1.0, 0.0, 0.0], [0.8, 0.0, 0.2], [0.5, 1e-5, 0.5]])
TS = np.array([1.0, 10.0, 100.0])
W = np.array([1.0, 1e4, 1.0])  # y2 is ~1e-5: weight it so all three species matter


_REFS = [_rober_sens_reference(100.0, TS, u0, with_state=True) for u0 in U0]
U_REF = np.stack([r[0] for r in _REFS], axis=1)  # [T, groups, 3]
G_REF = sum(np.einsum("tij,i->j", s, W) for _, s in _REFS)  # d(sum_t,g W . u) / d log k
PROB = models.robertson(u0=U0, tspan=(0.0, 100.0), log_rates=True)


def _solve(method, sensealg=None, mode="function", prob=PROB, rtol=1e-9, atol=1e-13):
    def run(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            sol = sd.solve(prob.remake(p=q), method, saveat=tf.constant(TS), rtol=rtol, atol=atol,
                           sensealg=sensealg, throw=False, max_steps=5000)
            loss = tf.reduce_sum(sol.u * tf.constant(W))
        return sol.u, tape.gradient(loss, q), sol.status, sol.stats

    fn = run if mode == "eager" else tf.function(run, jit_compile=(mode == "xla"))
    return fn(prob.p)


# ----------------------------------------------------------------- the linear algebra


@pytest.mark.parametrize("transpose", [False, True])
def test_block_diagonal_lu_against_numpy(transpose):
    rng = np.random.default_rng(0)
    batch, nb, b = 2, 4, 3
    blocks = rng.normal(size=(batch, nb, b, b)) + 3.0 * np.eye(b)
    a = np.zeros((batch, nb * b, nb * b))
    for i in range(batch):
        for k in range(nb):
            a[i, k * b:(k + 1) * b, k * b:(k + 1) * b] = blocks[i, k]
    at = np.swapaxes(a, 1, 2) if transpose else a
    op = sd.linsolve.MatrixOperator(tf.constant(a))
    rhs = rng.normal(size=(batch, nb * b))
    res = BlockLU(b).solve(op, tf.constant(rhs), transpose=transpose)
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(at, rhs[..., None])[..., 0], rtol=1e-12, atol=1e-12)
    rhs2 = rng.normal(size=(batch, nb * b, 2))  # two right-hand sides
    res2 = BlockLU(b).solve(op, tf.constant(rhs2), transpose=transpose)
    np.testing.assert_allclose(res2.x.numpy(), np.linalg.solve(at, rhs2), rtol=1e-12, atol=1e-12)
    assert res.converged.numpy().all()
    a[1, 3:6, 3:6] = 0.0  # one singular block fails its system only
    res = BlockLU(b).solve(sd.linsolve.MatrixOperator(tf.constant(a)), tf.constant(rhs), transpose=transpose)
    assert res.converged.numpy().tolist() == [True, False]
    assert np.isnan(res.x.numpy()[1]).all() and np.isfinite(res.x.numpy()[0]).all()


def test_block_diagonal_lu_rejects_bad_sizes():
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="block_size"):
            BlockLU(bad)
    with pytest.raises(ValueError, match="multiple of `block_size` = 4"):
        BlockLU(4).solve(sd.linsolve.MatrixOperator(tf.eye(6, batch_shape=[1], dtype=tf.float64)),
                         tf.ones([1, 6], tf.float64))
    with pytest.raises(ValueError, match="linsolve"):
        sd.Rodas5(linsolve="block")
    with pytest.raises(ValueError, match="not a multiple of `block_size` = 2"):
        _solve(sd.Rodas5(linsolve=BlockLU(2)), mode="eager")  # 9 state elements


def test_coloured_jacobian_equals_the_analytic_blocks():
    u = tf.constant(U0 + np.array([0.0, 2e-5, 0.0]))  # y2 > 0: every entry of the blocks non-trivial
    p = PROB.p
    g = lambda t, v: tf.reshape(PROB.f(t, tf.reshape(v, [3, 3]), p), [-1])  # noqa: E731
    blocks, dfdt = tf.function(lambda: linear.block_jacobian(g, tf.constant(0.0, tf.float64), tf.reshape(u, [-1]), 3))()
    np.testing.assert_allclose(blocks.numpy(), _rober_jac(log_rates=True)(0.0, u, p).numpy(), rtol=1e-14)
    np.testing.assert_array_equal(dfdt.numpy(), 0.0)  # autonomous


# ----------------------------------------------------------------- solves and gradients


@pytest.mark.parametrize("method", [sd.Rosenbrock23, sd.Kvaerno5])  # Rodas5: with the gradients below
def test_block_methods_against_scipy(method):
    low = method is sd.Rosenbrock23  # 2nd order: for loose tolerances
    u, _, status, stats = _solve(method(linsolve=BlockLU(3)), mode="function", rtol=1e-6 if low else 1e-9)
    assert int(status) == 0
    np.testing.assert_allclose(u.numpy(), U_REF, rtol=1e-3 if low else 1e-6, atol=1e-9 if low else 1e-12)
    np.testing.assert_allclose(u.numpy().sum(-1), U0.sum(-1)[None, :].repeat(3, 0), rtol=1e-12)  # mass
    assert int(stats["njac"]) == int(stats["nlu"]) > 0


@pytest.mark.parametrize("linsolve", [BlockLU(3), sd.linsolve.GMRES(restart=9)], ids=["block", "gmres"])
def test_auto_switching_with_a_linsolve(linsolve):
    # AutoTsit5Rodas5's stiff steps with the given solver. rtol 1e-7: at 1e-9 the stiffness estimate misses
    # Robertson's fast mode (docs/stiff.md, "Automatic switching").
    u, _, status, stats = _solve(sd.AutoTsit5Rodas5(linsolve=linsolve), mode="xla", rtol=1e-7, atol=1e-11)
    assert int(status) == 0 and int(stats["stiff_steps"]) > 0
    np.testing.assert_allclose(u.numpy(), U_REF, rtol=1e-4, atol=1e-10)
    if isinstance(linsolve, BlockLU):
        assert int(stats["njac"]) == int(stats["stiff_steps"]) and "nkrylov" not in stats
    else:
        assert int(stats["njac"]) == 0 and int(stats["nkrylov"]) >= int(stats["nsolve"]) > 0


@pytest.mark.parametrize("sensealg,mode", [
    (sd.ForwardSensitivity, "xla"),
    (sd.DiscreteAdjoint, "eager"),  # eager calls run compiled (XLA) too
    (sd.QuadratureAdjoint, "function"),
    (sd.InterpolatingAdjoint, "function"),  # backward state (a, dL/dp): solved with the dense LU
])
def test_block_gradients_against_scipy(sensealg, mode):
    u, g, status, _ = _solve(sd.Rodas5(linsolve=BlockLU(3)), sensealg(), mode=mode)
    assert int(status) == 0
    np.testing.assert_allclose(u.numpy(), U_REF, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g.numpy(), G_REF, rtol=1e-5)


def test_block_with_a_user_jacobian_and_a_singular_block():
    # The problem's per-group jac (sensode assembles [9, 9]; the method reads its diagonal blocks).
    calls = []
    prob = PROB.remake(jac=None)
    prob = sd.ODEProblem(prob.f, prob.u0, prob.tspan, prob.p, jac=_rober_jac(log_rates=True, calls=calls))
    u, g, status, _ = _solve(sd.Rodas5(linsolve=BlockLU(3)), sd.DiscreteAdjoint(), mode="xla", prob=prob)
    assert calls and int(status) == 0
    np.testing.assert_allclose(u.numpy(), U_REF, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g.numpy(), G_REF, rtol=1e-5)
    # A singular M = I / (gamma h) - J in one block (J = I / (gamma h) exactly is not reachable from f; use
    # the factorisation directly): the solve is NaN and marks the step failed.
    w = linear.BlockFactorised(tf.constant(np.stack([np.eye(2), 2.0 * np.eye(2)])), tf.constant(2.0, tf.float64))
    x = w.solve(tf.constant([1.0, 2.0, 3.0, 4.0], tf.float64))
    assert np.isnan(w.mark_failed([x])[0].numpy()).all()


def test_block_diagonal_lu_in_a_nonlinear_solve_and_its_implicit_adjoint():
    # Pairs (x_k, y_k) with x^3 + y = p_k and y - x = 0 within each pair: x^3 + x = p_k, blocks of 2.
    # Closed form: x solves the cubic (NumPy's roots), dx/dp = 1 / (3 x^2 + 1).
    p = tf.constant([2.0, 10.0, -0.5], tf.float64)

    def residual(u, p):
        x, y = u[..., 0::2], u[..., 1::2]
        return tf.reshape(tf.stack([x ** 3 + y - p, y - x], axis=-1), tf.shape(u))

    with tf.GradientTape() as tape:
        tape.watch(p)
        sol = sd.solve(sd.NonlinearProblem(residual, tf.zeros(6, tf.float64), p),
                       sd.NewtonRaphson(linsolve=BlockLU(2)), sensealg=sd.DiscreteAdjoint(linsolve=BlockLU(2)))
        loss = tf.reduce_sum(sol.u[0::2])
    x = np.array([np.real([r for r in np.roots([1.0, 0.0, 1.0, -q]) if abs(r.imag) < 1e-12][0]) for q in p.numpy()])
    np.testing.assert_allclose(sol.u.numpy(), np.repeat(x, 2), rtol=1e-10)
    np.testing.assert_allclose(tape.gradient(loss, p).numpy(), 1.0 / (3.0 * x ** 2 + 1.0), rtol=1e-10)
