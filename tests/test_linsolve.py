"""Linear solvers against numpy: plain and transposed, batched, in every execution mode."""

import numpy as np
import pytest
import tensorflow as tf

from sensode import linsolve as ls

MODES = ["eager", "function", "xla"]


def run(mode, fn):
    if mode == "eager":
        return fn()
    return tf.function(fn, jit_compile=(mode == "xla"))()


def random_systems(seed, batch, n, spd=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, n, n)) + 2.0 * np.sqrt(n) * np.eye(n)
    if spd:
        a = a @ np.transpose(a, (0, 2, 1)) + np.eye(n)
    b = rng.normal(size=(batch, n))
    return a, b


SOLVERS = {
    "LU": (ls.LU(), False),
    "GMRES": (ls.GMRES(restart=10), False),
    "BiCGStab": (ls.BiCGStab(), False),
    "CG": (ls.CG(), True),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transpose", [False, True])
def test_against_numpy(name, mode, transpose):
    solver, spd = SOLVERS[name]
    a, b = random_systems(1, 3, 12, spd)
    op = ls.MatrixOperator(tf.constant(a))
    res = run(mode, lambda: solver.solve(op, tf.constant(b), transpose=transpose))
    at = np.transpose(a, (0, 2, 1)) if transpose else a
    expected = np.linalg.solve(at, b[..., None])[..., 0]
    np.testing.assert_allclose(res.x.numpy(), expected, rtol=1e-8, atol=1e-9)
    assert res.converged.numpy().all()
    assert res.x.shape == (3, 12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_float32(name):
    solver, spd = SOLVERS[name]
    a, b = random_systems(2, 2, 8, spd)
    res = solver.solve(ls.MatrixOperator(tf.constant(a, tf.float32)), tf.constant(b, tf.float32))
    expected = np.linalg.solve(a, b[..., None])[..., 0]
    assert res.x.dtype == tf.float32
    np.testing.assert_allclose(res.x.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["LU", "GMRES"])
def test_multiple_right_hand_sides(name):
    solver, _ = SOLVERS[name]
    a, _ = random_systems(3, 2, 6)
    rhs = np.random.default_rng(4).normal(size=(2, 6, 3))
    res = solver.solve(ls.MatrixOperator(tf.constant(a)), tf.constant(rhs), transpose=True)
    expected = np.linalg.solve(np.transpose(a, (0, 2, 1)), rhs)
    np.testing.assert_allclose(res.x.numpy(), expected, rtol=1e-8, atol=1e-9)


def test_jacobian_operator_products_match_dense():
    rng = np.random.default_rng(5)
    u = tf.constant(rng.normal(size=(2, 4)))
    w = tf.constant(rng.normal(size=(4, 4)))

    def fn(x):
        return tf.sin(x) @ w + x**3

    op = ls.JacobianOperator(fn, u)
    jac = np.stack([np.cos(u.numpy()[i])[:, None] * w.numpy() + np.diag(3 * u.numpy()[i] ** 2) for i in range(2)])
    jac = np.transpose(jac, (0, 2, 1))  # d out_j / d u_i -> [j, i]
    v = rng.normal(size=(2, 4))
    np.testing.assert_allclose(op.dense().numpy(), jac, rtol=1e-12)
    np.testing.assert_allclose(op.mv(tf.constant(v)).numpy(), np.einsum("bji,bi->bj", jac, v), rtol=1e-12)
    np.testing.assert_allclose(op.rmv(tf.constant(v)).numpy(), np.einsum("bji,bj->bi", jac, v), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_lu_reports_singular_systems_per_row(mode):
    # Exactly singular, regular, and zero: TF's own Lu kernel would raise on rows 0 and 2.
    a = tf.constant([[[1.0, 1.0], [2.0, 2.0]], [[2.0, 1.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]], tf.float64)
    res = run(mode, lambda: ls.LU().solve(ls.MatrixOperator(a), tf.ones([3, 2], tf.float64)))
    np.testing.assert_array_equal(res.converged.numpy(), [False, True, False])
    np.testing.assert_allclose(res.x.numpy()[1], [1.0 / 3.0, 1.0 / 3.0])


@pytest.mark.parametrize("mode", MODES)
def test_lu_pivot_test_without_condition_estimate(mode):
    # The stiff methods' factorisation: exactly singular, zero and non-finite systems are singular
    # from the pivots alone (NaN solutions); a regular one, even ill-conditioned, is solved.
    a = tf.constant([[[1.0, 1.0], [2.0, 2.0]], [[2.0, 1.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]],
                     [[np.nan, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0 + 1e-9]]], tf.float64)

    def solve():
        lu = ls.LU()
        return lu.solve_factored(lu.factor(a, estimate_condition=False), tf.ones([5, 2], tf.float64))

    res = run(mode, solve)
    np.testing.assert_array_equal(res.converged.numpy(), [False, True, False, False, True])
    assert np.isnan(res.x.numpy()[[0, 2, 3]]).all()
    np.testing.assert_allclose(res.x.numpy()[1], [1.0 / 3.0, 1.0 / 3.0])
    np.testing.assert_allclose(res.x.numpy()[4], np.linalg.solve(a.numpy()[4], [1.0, 1.0]), atol=1e-6)  # cond 4e9


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_lu_inverse_against_numpy_and_pivot_test(mode, dtype):
    # Gauss-Jordan inverse (the stiff methods' path under XLA): numpy's inverse, including a matrix
    # that needs row exchanges (zero leading pivot); the same singular verdicts as `factor` without
    # the condition estimate, with NaN where singular.
    rng = np.random.default_rng(3)
    regular = rng.normal(size=(7, 7)) + 3.0 * np.eye(7)
    regular[0, 0] = 0.0
    cases = [regular, np.array([[0.0, 2.0], [3.0, 1.0]]), np.array([[1.0, 1.0], [2.0, 2.0]]), np.zeros((2, 2)),
             np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([[1.0, 1.0], [1.0, 1.0 + 1e-9]])]
    want_singular = [False, False, True, True, True, dtype == tf.float32]
    rtol = 1e-4 if dtype == tf.float32 else 1e-11
    for a, singular in zip(cases, want_singular):
        inv, sing = run(mode, lambda: ls.LU().inverse(tf.constant(a, dtype)))
        factored = run(mode, lambda: ls.LU().factor(tf.constant(a, dtype)[None], estimate_condition=False))
        assert bool(sing.numpy()) == singular == bool(factored.singular.numpy()[0]), a
        if singular:
            assert np.isnan(inv.numpy()).all()
        elif np.linalg.cond(a) < 1e6:
            np.testing.assert_allclose(inv.numpy(), np.linalg.inv(a), rtol=rtol, atol=rtol * np.abs(np.linalg.inv(a)).max())


def test_lu_inverse_rejects_what_it_cannot_invert():
    with pytest.raises(ValueError, match="square"):
        ls.LU().inverse(tf.ones([2, 3, 3], tf.float64))  # a batch: one matrix only
    with pytest.raises(ValueError, match="square"):
        ls.LU().inverse(tf.ones([2, 3], tf.float64))
    with pytest.raises(TypeError, match="float"):
        ls.LU().inverse(tf.ones([2, 2], tf.int32))


def test_lu_nonfinite_matrix_is_singular():
    a = tf.constant([[[np.nan, 1.0], [0.0, 1.0]]], tf.float64)
    assert not ls.LU().solve(ls.MatrixOperator(a), tf.ones([1, 2], tf.float64)).converged.numpy()[0]


@pytest.mark.parametrize("solver", [ls.GMRES(restart=3, max_iters=3), ls.BiCGStab(max_iters=1), ls.CG(max_iters=2)])
def test_krylov_non_convergence_is_reported(solver):
    a, b = random_systems(6, 1, 30, spd=True)
    a = a + np.diag(np.logspace(0, 6, 30))  # badly conditioned
    res = solver.solve(ls.MatrixOperator(tf.constant(a)), tf.constant(b))
    assert not res.converged.numpy()[0]
    assert np.isfinite(res.x.numpy()).all()


def test_zero_right_hand_side():
    a, _ = random_systems(7, 2, 5)
    for solver in (ls.LU(), ls.GMRES(), ls.BiCGStab()):
        res = solver.solve(ls.MatrixOperator(tf.constant(a)), tf.zeros([2, 5], tf.float64))
        np.testing.assert_array_equal(res.x.numpy(), 0.0)
        assert res.converged.numpy().all()


def test_invalid_options():
    with pytest.raises(ValueError, match="max_iters"):
        ls.GMRES(max_iters=0)
    with pytest.raises(ValueError, match="rtol"):
        ls.CG(rtol=-1.0)
    with pytest.raises(ValueError, match="MatrixOperator"):
        ls.MatrixOperator(tf.ones([3, 3]))


def test_stiff_factorisation_above_the_inverse_limit_under_xla_against_numpy():
    # Above INVERSE_UP_TO_UNDER_XLA states the stiff methods' `Factorised` solves by
    # block substitution with the inverted diagonal blocks of the LU factors
    # (70 states: a partial last block): M x = b and M^T x = b, one and several
    # right-hand sides; NaN for an exactly singular M.
    from sensode.ode.linear import INVERSE_UP_TO_UNDER_XLA, Factorised

    rng = np.random.default_rng(0)
    n = 70
    assert n > INVERSE_UP_TO_UNDER_XLA
    jac, inv_gh = rng.standard_normal((n, n)), 3.0
    m = inv_gh * np.eye(n) - jac
    blocked = []

    def solves(j, b):
        w = Factorised(j, tf.constant(inv_gh, tf.float64))
        blocked.append(w.blocked is not None)
        return [w._apply(b, t) for t in (False, True)]

    run = tf.function(solves, jit_compile=True)
    for b in (rng.standard_normal(n), rng.standard_normal((n, 5))):
        x, xt = run(tf.constant(jac), tf.constant(b))
        np.testing.assert_allclose(x, np.linalg.solve(m, b), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(xt, np.linalg.solve(m.T, b), rtol=1e-9, atol=1e-10)
    assert blocked == [True, True]
    singular = tf.function(lambda j, b: Factorised(j, tf.constant(3.0, tf.float64))._apply(b, False), jit_compile=True)
    assert np.all(np.isnan(singular(tf.constant(3.0 * np.eye(70)), tf.constant(np.ones(70)))))


def test_blocked_lu_under_xla_against_numpy():
    # Above 128 rows the XLA LU works by panels (the last one partial at 130):
    # P A = L U to rounding, |L| <= 1 (partial pivoting), with a zero leading
    # pivot in one system of the batch; solves against numpy.
    from sensode.nonlinear import lu as lu_mod

    n = 130
    assert n > lu_mod._LU_BLOCKED_ABOVE
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, n, n))
    a[1, :, 0] = 0.0
    a[1, 5, 0] = 1e-3  # the first column's pivot is far down
    packed, perm = tf.function(lu_mod._lu_xla_blocked, jit_compile=True)(tf.constant(a))
    packed, perm = packed.numpy(), perm.numpy()
    for b in range(2):
        lower, upper = np.tril(packed[b], -1) + np.eye(n), np.triu(packed[b])
        np.testing.assert_allclose(lower @ upper, a[b][perm[b]], atol=1e-12 * np.abs(a[b]).max())
    assert np.abs(np.tril(packed, -1)).max() <= 1.0
    rhs = rng.standard_normal((n, 3))
    x = tf.function(lambda m, r: ls.LU().solve(ls.MatrixOperator(m), r).x, jit_compile=True)(tf.constant(a[:1]), tf.constant(rhs[None]))
    np.testing.assert_allclose(x[0], np.linalg.solve(a[0], rhs), rtol=1e-8, atol=1e-10)


def test_lu_under_vectorized_map_matches_one_matrix_at_a_time():
    # TensorFlow has no pfor rule for Lu; importing sensode registers one (an ensemble of stiff solves
    # vectorises each sample's factorisations). Against NumPy: P A = L U for every matrix.
    import sensode  # noqa: F401  (registers the rule)

    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 4, 4))
    lu, perm = tf.vectorized_map(lambda m: tf.linalg.lu(m), tf.constant(a), fallback_to_while_loop=False)
    assert lu.shape == (5, 4, 4) and perm.shape == (5, 4)
    for i in range(5):
        low = np.tril(lu[i].numpy(), -1) + np.eye(4)
        up = np.triu(lu[i].numpy())
        np.testing.assert_allclose(low @ up, a[i][perm[i].numpy()], rtol=1e-12, atol=1e-12)
