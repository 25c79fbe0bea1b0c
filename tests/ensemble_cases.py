"""Shared cases of the ensemble tests (test_ensemble.py, test_ensemble_gradients.py): Lotka--Volterra
over parameters spanning two orders of magnitude, and single solves to compare with."""

import numpy as np
import tensorflow as tf

import sensode as sd

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



def _single_final_grad(p, sensealg):
    """d sum(u(t1)^2) / dp of one Lotka--Volterra solve (Tsit5, `OPTS`)."""
    pi = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pi)
        ref = sd.solve(sd.ODEProblem(LV.f, LV.u0, LV.tspan, pi), sd.Tsit5(), sensealg=sensealg, **OPTS)
        loss = tf.reduce_sum(ref.u[-1] ** 2)
    return tape.gradient(loss, pi).numpy()
