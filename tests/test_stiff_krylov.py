"""Stiff methods with matrix-free Newton--Krylov solves (``linsolve=GMRES(...)``) against independent references.

The same references as `test_stiff.py` (SciPy Radau with the forward
sensitivity equations at rtol 1e-11, ``expm`` / ``expm_frechet`` for a linear
system with eigenvalues from -1 to -1e6), from `stiff_references.py`; files
of their own so that they run in separate processes (the per-process memory
bound). Robertson's gradients with Krylov solves for every algorithm are in
`test_stiff_krylov_sensitivities.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode.ode.linear import WithJacobian
from stiff_references import (A_STIFF, ROBER_LOG, SENS_REF, SENS_TS, SENS_W, U0_LIN, _rober_flat, _rober_jac,
                              assert_linear_against_expm)

# ----------------------------------------------------------------- matrix-free Newton--Krylov (linsolve=GMRES(...))
# Every solve with M = I/(gamma h) - J is a Krylov solve with J v by one JVP of f: no Jacobian, no LU. The
# references are the same independent ones as above; GMRES's restart equals the system size, so a solve
# converges to rounding (the default rtol, 1e-10 in float64).

GMRES, BiCGStab = sd.linsolve.GMRES, sd.linsolve.BiCGStab


@tf.function(jit_compile=True)
def _krylov_linear_grads(a, u0):
    with tf.GradientTape() as tape:
        tape.watch([a, u0])
        prob = sd.ODEProblem(lambda t, u, p: tf.linalg.matvec(p, u), u0, (0.0, 1.0), a)
        sol = sd.solve(prob, sd.Rodas5(linsolve=GMRES(restart=4)), saveat=tf.constant([0.5, 1.0], tf.float64),
                       rtol=1e-9, atol=1e-12, sensealg=sd.DiscreteAdjoint(), max_steps=5000)
        loss = tf.reduce_sum(sol.u[-1] * tf.constant([1.0, -2.0, 0.5, 3.0], tf.float64))
    return sol.u, tape.gradient(loss, [a, u0]), sol.stats


def test_krylov_linear_stiff_discrete_adjoint_xla_against_expm_and_frechet():
    u, (ga, gu0), stats = _krylov_linear_grads(tf.constant(A_STIFF), tf.constant(U0_LIN))
    assert int(stats["njac"]) == 0 and int(stats["nlu"]) == 0, stats  # never a Jacobian nor an LU
    assert int(stats["nsolve"]) == 8 * int(stats["steps"]) and int(stats["nkrylov"]) >= int(stats["nsolve"]), stats
    assert_linear_against_expm(u, ga, gu0)


def test_krylov_robertson_discrete_adjoint_variable_read_inside_f():
    # d u / d log k through a tf.Variable that f reads (no p): the Krylov solves' adjoints reach it via the
    # recorded JVP, and the custom gradient's forward reads no variable (graph-mode custom_gradient).
    # Also Kvaerno5's Newton--Krylov stages through the discrete adjoint in a plain graph (Rodas5 with Krylov
    # solves in a plain graph: test_stiff_krylov_sensitivities.py, BiCGStab).
    log_k = tf.Variable(ROBER_LOG.p)
    prob = sd.ODEProblem(lambda t, u, p: ROBER_LOG.f(t, u, log_k), ROBER_LOG.u0, ROBER_LOG.tspan)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            sol = sd.solve(prob, sd.Kvaerno5(linsolve=GMRES(restart=3)), saveat=tf.constant(SENS_TS), rtol=1e-9,
                           atol=1e-13, sensealg=sd.DiscreteAdjoint(), throw=False, max_steps=5000)
            loss = tf.reduce_sum(sol.u * tf.constant(SENS_W))
        return tape.gradient(loss, log_k)

    np.testing.assert_allclose(run().numpy(), SENS_REF, rtol=1e-5)


@pytest.mark.parametrize("method", [sd.Rosenbrock23, sd.Rodas5, sd.Kvaerno5])
def test_krylov_step_equals_lu_step(method):
    # One step on Robertson (nonlinear, non-trivial J) from the same state: the matrix-free step is the
    # LU step up to the Krylov tolerance. A problem's jac is not used with Krylov: a wrong one changes nothing.
    calls = []
    wrong = WithJacobian(_rober_flat, lambda t, y: calls.append(1) or 0.5 * _rober_jac()(t, y[0], k))
    k = tf.constant([0.04, 3e7, 1e4], tf.float64)
    pairs = [(method(), _rober_flat), (method(linsolve=GMRES(restart=3)), _rober_flat),
             (method(linsolve=GMRES(restart=3)), wrong)]

    @tf.function
    def steps():
        t, h = tf.constant(0.1, tf.float64), tf.constant(1e-3, tf.float64)
        y = [tf.constant([0.9, 2e-5, 0.1], tf.float64)]
        out = []
        for m, fn in pairs:
            fy = fn(t, y)
            s = m.step(fn, t, y, fy, h, m.init(fn, t, y, fy))
            out.append((s.y1[0], m.stats(s.carry)))
        return out

    (y_lu, st_lu), (y_kr, st_kr), (y_wr, _) = steps()
    assert not calls
    np.testing.assert_allclose(y_kr.numpy(), y_lu.numpy(), rtol=1e-10, atol=1e-20)
    np.testing.assert_array_equal(y_wr.numpy(), y_kr.numpy())
    assert "nkrylov" not in st_lu and int(st_lu["njac"]) == 1 and int(st_lu["nlu"]) == 1
    assert int(st_kr["njac"]) == 0 and int(st_kr["nlu"]) == 0 and int(st_kr["nkrylov"]) > 0
    assert int(st_kr["nsolve"]) == int(st_lu["nsolve"])


_NOT_CONVERGING = GMRES(max_iters=1, restart=1)


@pytest.mark.parametrize("method", [sd.Rodas5, sd.Kvaerno5])
def test_krylov_not_converging_rejects_steps_and_fails_with_nan(method):
    # One GMRES iteration cannot solve with M = I/(gamma h) - A for A's eigenvalues -1 .. -1e6 (not a multiple of
    # I) but at tiny h (M ~ I/(gamma h)): larger steps are rejected, the solve crawls and fails with a status
    # and NaN, never a wrong answer.
    m = method(linsolve=_NOT_CONVERGING)
    f = lambda t, y: [tf.linalg.matvec(tf.constant(A_STIFF), y[0])]  # noqa: E731
    t, h, y = tf.constant(0.0, tf.float64), tf.constant(1e-3, tf.float64), [tf.constant(U0_LIN)]
    fy = f(t, y)
    # Also a solver whose iterates are accurate but never meet rtol = 0: "not converged" is what counts
    # (with it, Kvaerno5's Newton iteration would otherwise converge).
    for mm in (m, method(linsolve=GMRES(rtol=0.0, max_iters=8, restart=4))):
        step = mm.step(f, t, y, fy, h, mm.init(f, t, y, fy))
        if method is sd.Rodas5:
            assert np.all(np.isnan(step.y1[0].numpy())), mm  # the proposal is NaN, as with a singular LU
        else:
            assert np.all(np.isinf(step.err[0].numpy())), mm  # the stage fails: the step is rejected
    prob = sd.ODEProblem(lambda t, u, p: tf.linalg.matvec(p, u), tf.constant(U0_LIN), (0.0, 1.0),
                         tf.constant(A_STIFF))
    sol = sd.solve(prob, m, rtol=1e-6, atol=1e-9, max_steps=200, throw=False, compile=False)
    assert int(sol.status) != 0 and int(sol.stats["rejected"]) > 0, sol.stats
    assert np.all(np.isnan(sol.u.numpy()[-1]))


def test_krylov_bad_linsolve_raises():
    for method in (sd.Rosenbrock23, sd.Rodas5, sd.Kvaerno5):
        for bad in ("gmres", GMRES, sd.NewtonRaphson()):
            with pytest.raises(ValueError, match="`linsolve` must be"):
                method(linsolve=bad)
    # LU() is the default, and methods are cache keys: equal and hashed alike exactly when their options are.
    assert sd.Rodas5(linsolve=sd.linsolve.LU()) == sd.Rodas5() and repr(sd.Rodas5()) == "Rodas5()"
    assert sd.Rodas5(linsolve=GMRES(restart=3)) == sd.Rodas5(linsolve=GMRES(restart=3))
    assert hash(sd.Kvaerno5(linsolve=GMRES())) == hash(sd.Kvaerno5(linsolve=GMRES()))
    assert sd.Kvaerno5(linsolve=GMRES()) != sd.Kvaerno5(linsolve=BiCGStab())
    assert sd.Rodas5(linsolve=GMRES()) != sd.Rodas5() and "GMRES" in repr(sd.Kvaerno5(linsolve=GMRES()))
