"""Gradients of ensemble solves: against single solves, SciPy and closed forms; pfor, XLA, variables read by
`f`, stiff ensembles.

Apart from test_ensemble.py so that the compiled programs of one process stay within about 3 GB."""

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import sensode as sd
from sensode import gsa

from ensemble_cases import LV, OPTS, _params, _single_final_grad


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
    for sensealg in (sd.InterpolatingAdjoint(),):
        pt = tf.constant(p[:2])
        with tf.GradientTape() as tape:
            tape.watch(pt)
            sol = gsa.solve_ensemble(short, p=pt, alg=sd.Rodas5(), saveat=[1.0], rtol=1e-9, atol=1e-13, sensealg=sensealg)
            loss = tf.reduce_sum(sol.u[:, -1, 1])
        np.testing.assert_allclose(tape.gradient(loss, pt).numpy()[:, 0], fd, rtol=1e-5, err_msg=repr(sensealg))
