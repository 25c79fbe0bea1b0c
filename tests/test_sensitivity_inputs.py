"""Gradients with respect to every form of input, by every sensitivity algorithm.

Nested parameter dicts with non-floating leaves, batched ``u0``, float32,
`tf.Variable`s read inside ``f``, Keras ``Dense`` weights, and the
checkpointing and argument checks; references are closed forms (``u' = -k u +
s``, exponential decay) and SciPy's matrix exponential. Split from
``test_sensitivities.py`` (same helpers, in ``reference_problems.py``) so that
no test process compiles both halves' programs: XLA programs stay in memory
until the process ends.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import sensode as sd

from reference_problems import DECAY_K, DECAY_U0, DECAY_W, SENSEALGS, assert_close

F64 = tf.float64
F32 = tf.float32

ALL = list(SENSEALGS)


# ====================================================================================
# Nested p, batched u0, float32, tf.Variables read inside f (small eager problems)
# ====================================================================================
SRC_K, SRC_S = 0.7, np.array([0.2, -0.1])
SRC_U0 = np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])  # a batch of 3 states
SRC_TS = np.array([0.5, 1.0])
SRC_W = np.random.default_rng(11).normal(size=(2, 3, 2))


def source_exact():
    """``u' = -k u + s``: ``u = s/k + (u0 - s/k) e``, ``e = exp(-k t)``; ``L = sum W_i u(t_i)``."""
    k, s, u0 = SRC_K, SRC_S, SRC_U0
    du0, ds, dk = np.zeros_like(u0), np.zeros(2), 0.0
    for t, w in zip(SRC_TS, SRC_W):
        e = np.exp(-k * t)
        du0 += w * e
        ds += np.sum(w, axis=0) * (1.0 - e) / k
        dk += np.sum(w * (-s / k**2 * (1.0 - e) - t * e * (u0 - s / k)))
    return {"u0": du0, "k": dk, "s": ds}


def _source_f(t, u, p):
    return -p["rate"]["k"] * u + p["source"]


@pytest.mark.parametrize("dtype,tols,tol", [(F64, dict(rtol=1e-9, atol=1e-11), 1e-7),
                                            (F32, dict(rtol=1e-6, atol=1e-8), 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ALL)
def test_nested_p_batched_u0(name, dtype, tols, tol):
    u0 = tf.constant(SRC_U0, dtype)
    k = tf.constant(SRC_K, dtype)
    s = tf.constant(SRC_S, dtype)
    with tf.GradientTape() as tape:
        tape.watch([u0, k, s])
        # A non-floating leaf rides along and gets no gradient.
        p = {"rate": {"k": k}, "source": s, "n_species": tf.constant(2)}
        sol = sd.solve(sd.ODEProblem(_source_f, u0, (0.0, 1.0), p), sd.Tsit5(), saveat=tf.constant(SRC_TS, dtype),
                       sensealg=SENSEALGS[name], **tols)
        loss = tf.reduce_sum(sol.u * tf.constant(SRC_W, dtype))
    got = tape.gradient(loss, {"u0": u0, "k": k, "s": s})
    ref = source_exact()
    for q in ("u0", "k", "s"):
        assert got[q].dtype == dtype
        assert_close(f"{name} dL/d{q}", got[q].numpy(), ref[q], tol)


def test_forward_sensitivities_nested_p():
    p = {"rate": {"k": tf.constant(SRC_K, F64)}, "source": tf.constant(SRC_S, F64), "n_species": tf.constant(2)}
    u0 = tf.constant(SRC_U0[0], F64)
    res = sd.forward_sensitivities(sd.ODEProblem(_source_f, u0, (0.0, 1.0), p), sd.Tsit5(), saveat=SRC_TS,
                                   rtol=1e-9, atol=1e-11)
    assert set(res.du_dp) == {"rate", "source", "n_species"}
    assert res.du_dp["n_species"] is None
    e = np.exp(-SRC_K * SRC_TS)  # [T]
    # du_j/ds_l = delta_jl (1 - e) / k ;  du_j/du0_l = delta_jl e
    np.testing.assert_allclose(res.du_dp["source"].numpy(), ((1 - e) / SRC_K)[:, None, None] * np.eye(2), atol=1e-8)
    np.testing.assert_allclose(res.du_du0.numpy(), e[:, None, None] * np.eye(2), atol=1e-8)
    k, s, x0 = SRC_K, SRC_S, SRC_U0[0]
    du_dk = -s / k**2 * (1 - e[:, None]) - SRC_TS[:, None] * e[:, None] * (x0 - s / k)
    assert res.du_dp["rate"]["k"].shape == (2, 2)
    np.testing.assert_allclose(res.du_dp["rate"]["k"].numpy(), du_dk, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_variable_read_inside_f(name):
    k = tf.Variable(DECAY_K, dtype=F64)
    u0 = tf.constant(DECAY_U0, F64)
    T = 1.0
    with tf.GradientTape() as tape:  # watches the trainable variable by itself
        tape.watch(u0)
        prob = sd.ODEProblem(lambda t, u, p: -k * u, u0, (0.0, T))
        sol = sd.solve(prob, sd.Tsit5(), sensealg=SENSEALGS[name], rtol=1e-9, atol=1e-11)
        loss = tf.reduce_sum(sol.u[-1] * DECAY_W)
    dk, du0 = tape.gradient(loss, [k, u0])
    e = np.exp(-DECAY_K * T)
    assert_close(f"{name} dL/dk", dk.numpy(), -T * (DECAY_W @ DECAY_U0) * e, 1e-7)
    assert_close(f"{name} dL/du0", du0.numpy(), DECAY_W * e, 1e-7)


@pytest.mark.parametrize("name", ["forward", "discrete_ckpt", "interpolating"])
def test_keras_dense_weights(name):
    # u' = Dense(u) = K^T u + b. With z = [u; 1], z' = M z, M = [[K^T, b], [0, 0]]:
    # the exact gradients with respect to K and b are blocks of dL/dM (expm_frechet).
    K = np.array([[-0.4, 0.9], [-1.1, -0.2]])
    b = np.array([0.3, -0.5])
    u0 = np.array([1.0, -0.5])
    w = np.array([0.7, -1.3])
    T = 1.0
    layer = tf.keras.layers.Dense(
        2, kernel_initializer=tf.keras.initializers.Constant(K), bias_initializer=tf.keras.initializers.Constant(b),
        dtype="float64",
    )
    layer.build((None, 2))
    with tf.GradientTape() as tape:
        prob = sd.ODEProblem(lambda t, u, p: layer(u), tf.constant(u0[None], F64), (0.0, T))
        sol = sd.solve(prob, sd.Tsit5(), sensealg=SENSEALGS[name], rtol=1e-9, atol=1e-11)
        loss = tf.reduce_sum(sol.u[-1, 0] * w)
    dK, db = tape.gradient(loss, [layer.kernel, layer.bias])

    M = np.zeros((3, 3))
    M[:2, :2], M[:2, 2] = K.T, b
    z0, wz = np.append(u0, 1.0), np.append(w, 0.0)
    dM = np.zeros((3, 3))
    for i in range(2):
        for j in range(3):
            Eij = np.zeros((3, 3))
            Eij[i, j] = 1.0
            dM[i, j] = wz @ scipy.linalg.expm_frechet(M * T, Eij * T, compute_expm=False) @ z0
    assert_close(f"{name} dL/dkernel", dK.numpy(), dM[:2, :2].T, 1e-7)
    assert_close(f"{name} dL/dbias", db.numpy(), dM[:2, 2], 1e-7)


# ====================================================================================
# The automatic choice, memory, errors
# ====================================================================================
def test_default_sensealg_choices():
    alg, reason = sd.default_sensealg(sd.models.lotka_volterra())
    assert isinstance(alg, sd.ForwardSensitivity) and "2 + 4" in reason
    alg, reason = sd.default_sensealg(sd.models.neural_ode_mlp())
    assert isinstance(alg, sd.DiscreteAdjoint) and ">" in reason
    # A stiff method: the same rule (forward sensitivities reuse the state's LU), never backsolve.
    for method in (sd.Rodas5(), sd.Kvaerno5(), sd.AutoTsit5Rodas5()):
        alg, reason = sd.default_sensealg(sd.models.robertson(), method)
        assert isinstance(alg, sd.ForwardSensitivity) and "stiff" in reason and "3 + 3" in reason, reason
        alg, reason = sd.default_sensealg(sd.models.neural_ode_mlp(), method)
        assert isinstance(alg, sd.DiscreteAdjoint) and "stiff" in reason, reason
    alg, reason = sd.default_sensealg(sd.models.robertson(), sd.Tsit5())
    assert isinstance(alg, sd.ForwardSensitivity) and "stiff" not in reason


@pytest.mark.parametrize("k", [2, 4])
def test_checkpointing_stores_k_states_independent_of_steps(k):
    # The forward pass keeps k loop states (one per chunk of iterations), however
    # many steps the solve takes.
    from sensode.api import prepare_ode_solve

    counts = {}
    for t1 in (1.0, 10.0):
        prob = sd.models.exponential_decay(tspan=(0.0, t1))
        _, spec, ts, t0, t1_, _ = prepare_ode_solve(prob, sd.Tsit5(), saveat=None, dt=None, rtol=1e-8, atol=1e-10,
                                                    max_steps=1000, dtmin=None, dtmax=None, controller=None)
        fwd = sd.DiscreteAdjoint(checkpoints=k).forward(spec, prob.u0, ts, t0, t1_, prob.p, [])
        stats, states = fwd.stats, fwd.aux.starts.y[0]
        assert states.shape == [k] + prob.u0.shape.as_list()
        counts[t1] = int(stats["accepted"])
    assert counts[10.0] > 3 * counts[1.0]  # the longer span really takes more steps


def test_backsolve_keeps_no_dense_record():
    from sensode.api import prepare_ode_solve

    prob = sd.models.exponential_decay()
    _, spec, ts, t0, t1, _ = prepare_ode_solve(prob, sd.Tsit5(), saveat=None, dt=None, rtol=1e-6, atol=1e-8,
                                               max_steps=200, dtmin=None, dtmax=None, controller=None)
    assert sd.BacksolveAdjoint().forward(spec, prob.u0, ts, t0, t1, prob.p, []).aux.record is None
    # The recording adjoints keep loop states at chunk starts (ceil(sqrt(200)) = 15 at most), no max_steps record.
    for alg in (sd.InterpolatingAdjoint(), sd.QuadratureAdjoint()):
        aux = alg.forward(spec, prob.u0, ts, t0, t1, prob.p, []).aux
        assert not hasattr(aux, "record") and aux.starts.t.shape[0] == 15 and 1 <= int(aux.count) <= 15


@pytest.mark.parametrize("alg", [sd.InterpolatingAdjoint(), sd.QuadratureAdjoint()], ids=lambda a: type(a).__name__)
def test_recording_adjoints_across_many_chunks_against_the_closed_form(alg):
    # max_steps = 100: chunks of 10 iterations, so the ~40 steps of this solve (and those of the backward
    # solve, for QuadratureAdjoint's quadrature) are recorded and integrated in several chunks, with save times
    # inside chunks. u' = -k u: u(t) = u0 exp(-k t);
    # L = sum_i w_i u(t_i)^2, dL/dk = sum_i -2 t_i w_i u(t_i)^2, dL/du0 = sum_i 2 w_i u(t_i)^2 / u0.
    import tensorflow as tf

    k, u0 = 0.7, 1.3
    ts = np.array([0.5, 1.7, 2.0, 3.3, 5.0])
    w = np.array([1.0, -2.0, 0.5, 3.0, 1.0])
    prob = sd.ODEProblem(lambda t, u, p: -p * u, tf.constant(u0, tf.float64), (0.0, 5.0), tf.constant(k, tf.float64))

    @tf.function
    def run(u0_, k_):
        with tf.GradientTape() as tape:
            tape.watch([u0_, k_])
            sol = sd.solve(prob.remake(u0=u0_, p=k_), sd.Tsit5(), saveat=tf.constant(ts), rtol=1e-10, atol=1e-12,
                           sensealg=alg, max_steps=100, throw=False)
            loss = tf.reduce_sum(tf.constant(w) * sol.u ** 2)
        return tape.gradient(loss, [u0_, k_]), sol.stats["accepted"], sol.status

    (g_u0, g_k), steps, status = run(tf.constant(u0, tf.float64), tf.constant(k, tf.float64))
    assert int(status) == 0 and int(steps) > 20  # at least three chunks of 10
    u = u0 * np.exp(-k * ts)
    np.testing.assert_allclose(g_k.numpy(), np.sum(-2.0 * ts * w * u ** 2), rtol=1e-7)
    np.testing.assert_allclose(g_u0.numpy(), np.sum(2.0 * w * u ** 2) / u0, rtol=1e-7)


@pytest.mark.parametrize("bad", ["forward", sd.Tsit5(), sd.ForwardSensitivity])
def test_solve_rejects_wrong_sensealg_type(bad):
    with pytest.raises(TypeError, match="sensealg"):
        sd.solve(sd.models.exponential_decay(), sd.Tsit5(), sensealg=bad)


@pytest.mark.parametrize("checkpoints", [0, -1, 2.5, True])
def test_bad_checkpoints(checkpoints):
    with pytest.raises(ValueError, match="checkpoints"):
        sd.DiscreteAdjoint(checkpoints=checkpoints)
    with pytest.raises(ValueError, match="checkpoints"):
        sd.InterpolatingAdjoint(checkpoints=checkpoints)


@functools.lru_cache(maxsize=None)
def _small_solution():
    return sd.solve(sd.models.exponential_decay(), sd.Tsit5(), saveat=[0.5, 1.0])


def test_adjoint_sensitivities_empty_loss():
    with pytest.raises(ValueError, match="loss is empty"):
        sd.adjoint_sensitivities(_small_solution(), sensealg=sd.InterpolatingAdjoint())


@pytest.mark.parametrize("bad", [sd.ForwardSensitivity(), sd.DiscreteAdjoint()], ids=["forward", "discrete"])
def test_adjoint_sensitivities_rejects_non_continuous(bad):
    with pytest.raises(TypeError, match="sensealg"):
        sd.adjoint_sensitivities(_small_solution(), sensealg=bad, dgdu_discrete=np.ones((2, 1)))
