"""Gradients of ODE solves by every sensitivity algorithm, against independent references.

References never come from sensode: the matrix exponential and its Fréchet
derivative (`scipy.linalg.expm_frechet`) for ``u' = A u`` and closed forms for
exponential decay. Lotka--Volterra against SciPy, adjoint_sensitivities and
finite differences are in `test_sensitivities_lotka_volterra.py` (a process
per file: each compiles fewer XLA programs).

Cost: accuracy checks run under ``tf.function(jit_compile=True)`` (one compile
per algorithm and problem, shared between tests through ``functools.lru_cache``);
eager and plain ``tf.function`` runs use tiny problems.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import sensode as sd

from reference_problems import (
    DECAY_K,
    DECAY_U0,
    DECAY_W,
    LINEAR_A,
    LINEAR_U0,
    SENSEALGS,
    Measured,
    assert_close,
    in_mode,
    rel_err,
)

F64 = tf.float64
F32 = tf.float32

ALL = list(SENSEALGS)

TIGHT = dict(rtol=1e-10, atol=1e-12)


MEASURED = Measured()  # measured relative errors, printed (run with -s to see them)


# ====================================================================================
# Linear ODE u' = A u: exact gradients from the matrix exponential
# ====================================================================================
LIN_T = 1.5
LIN_TS = np.linspace(0.1, LIN_T, 15)  # the last save time is t1
_rng = np.random.default_rng(3)
LIN_W_MANY = _rng.normal(size=(len(LIN_TS), 3))
LIN_W_FINAL = np.array([0.7, -1.3, 0.4])


def _linear_exact(weights):
    """Exact gradients of ``L = sum_i <W_i, u(t_i)>`` over ``LIN_TS`` for ``u' = A u``."""
    A, u0, n = LINEAR_A, LINEAR_U0, LINEAR_A.shape[0]
    du0 = np.zeros(n)
    dA = np.zeros((n, n))
    dts = np.zeros(len(LIN_TS))
    for i, (t, w) in enumerate(zip(LIN_TS, weights)):
        if not np.any(w):
            continue
        E = scipy.linalg.expm(A * t)
        du0 += E.T @ w
        for a in range(n):
            for b in range(n):
                Eab = np.zeros((n, n))
                Eab[a, b] = 1.0
                # d expm(A t) / dA_ab = Frechet(A t, E_ab t)
                dA[a, b] += w @ scipy.linalg.expm_frechet(A * t, Eab * t, compute_expm=False) @ u0
        dts[i] = w @ A @ E @ u0
    # Moving t0 shifts the whole trajectory: u(t) = expm(A (t - t0)) u0.
    return {"u0": du0, "A": dA, "t0": -np.sum(dts), "t1": dts[-1], "ts": dts[:-1]}


@functools.lru_cache(maxsize=None)
def linear_reference():
    w_final = np.zeros_like(LIN_W_MANY)
    w_final[-1] = LIN_W_FINAL
    return {"final": _linear_exact(w_final), "many": _linear_exact(LIN_W_MANY)}


@functools.lru_cache(maxsize=None)
def linear_gradients(name):
    """Both losses' gradients from one XLA-compiled solve with ``SENSEALGS[name]``."""
    sensealg = SENSEALGS[name]
    base = sd.models.linear(A=LINEAR_A, u0=LINEAR_U0, tspan=(0.0, LIN_T))

    @tf.function(jit_compile=True)
    def run(u0, A, t0, t1, ts_inner):
        # One solve and one (non-persistent) tape per loss: a persistent tape may take second-order
        # gradients, so the solve's forward pass stays recorded, and TF then builds the gradient of
        # its while loops while tracing (8 s here for the discrete adjoint, against under 1 s).
        out = {}
        for key in ("final", "many"):
            with tf.GradientTape() as tape:
                tape.watch([u0, A, t0, t1, ts_inner])
                prob = sd.ODEProblem(base.f, u0, (t0, t1), A)
                # The last save time is t1 itself, so dL/dt1 arrives through saveat.
                ts = tf.concat([ts_inner, t1[None]], 0)
                sol = sd.solve(prob, sd.Tsit5(), saveat=ts, sensealg=sensealg, **TIGHT)
                w = LIN_W_FINAL if key == "final" else LIN_W_MANY
                loss = tf.reduce_sum((sol.u[-1] if key == "final" else sol.u) * w)
            g = tape.gradient(loss, [u0, A, t0, t1, ts_inner])
            out[key] = dict(zip(["u0", "A", "t0", "t1", "ts"], g))
        return out

    res = run(tf.constant(LINEAR_U0, F64), tf.constant(LINEAR_A, F64), tf.constant(0.0, F64), tf.constant(LIN_T, F64),
              tf.constant(LIN_TS[:-1], F64))
    return {k: {q: v.numpy() for q, v in d.items()} for k, d in res.items()}


@pytest.mark.parametrize("loss", ["final", "many"])
@pytest.mark.parametrize("name", ALL)
def test_linear_exact_gradients(name, loss):
    got = linear_gradients(name)[loss]
    ref = linear_reference()[loss]
    errs = {}
    for q in ("u0", "A", "t0", "t1"):
        errs[q] = assert_close(f"{name}/{loss} dL/d{q}", got[q], ref[q], 1e-6)
    if loss == "many":
        errs["ts"] = assert_close(f"{name}/{loss} dL/dts", got["ts"], ref["ts"], 1e-6)
    else:  # no loss term at the interior save times
        np.testing.assert_allclose(got["ts"], 0.0, atol=1e-12)
    MEASURED[("linear", name, loss)] = errs


def test_checkpointed_discrete_matches_plain_discrete():
    # Different discretisations (the segmented solve restarts at the cuts), so
    # they agree to the solver tolerance, not to round-off.
    plain, ckpt = linear_gradients("discrete"), linear_gradients("discrete_ckpt")
    for loss in ("final", "many"):
        for q in ("u0", "A", "t0", "t1"):
            assert rel_err(ckpt[loss][q], plain[loss][q]) < 1e-8, (loss, q)


# ====================================================================================
# Exponential decay u' = -k u: closed forms, every algorithm in every execution mode
# ====================================================================================
DECAY_T0, DECAY_T1 = 0.2, 1.2
DECAY_V = np.array([0.4, 0.9])  # weight on u(t0)


def decay_exact():
    """``L = <V, u(t0)> + <W, u(t1)>`` with ``u(t1) = u0 exp(-k (t1 - t0))``."""
    tau = DECAY_T1 - DECAY_T0
    e = np.exp(-DECAY_K * tau)
    end = DECAY_W @ DECAY_U0 * e
    return {"u0": DECAY_V + DECAY_W * e, "k": -tau * end, "t0": DECAY_K * end, "t1": -DECAY_K * end}


# XLA: every algorithm is compiled with jit_compile=True by the linear and
# Lotka--Volterra tests below (dL/dt0 included); compiling the decay problem as
# well would double the cost of this file.
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", ALL)
def test_decay_closed_form(name, mode):
    sensealg = SENSEALGS[name]
    decay = sd.models.exponential_decay()

    def grads(u0, k, t0, t1):
        with tf.GradientTape() as tape:
            tape.watch([u0, k, t0, t1])
            prob = sd.ODEProblem(decay.f, u0, (t0, t1), k)
            sol = sd.solve(prob, sd.Tsit5(), sensealg=sensealg, **TIGHT)  # saveat=None: [t0, t1]
            loss = tf.reduce_sum(sol.u[0] * DECAY_V) + tf.reduce_sum(sol.u[1] * DECAY_W)
        return tape.gradient(loss, [u0, k, t0, t1])

    got = in_mode(mode, grads)(
        tf.constant(DECAY_U0, F64), tf.constant(DECAY_K, F64), tf.constant(DECAY_T0, F64), tf.constant(DECAY_T1, F64)
    )
    ref = decay_exact()
    for q, g in zip(["u0", "k", "t0", "t1"], got):
        assert_close(f"{name}/{mode} dL/d{q}", g.numpy(), ref[q], 1e-8)


@pytest.mark.parametrize("name", ALL)
def test_save_time_gradient_at_span_ends(name):
    # saveat given explicitly as [t0, mid, t1] (separate tensors from tspan):
    # dL/dts_i = <W_i, f(u(ts_i))> = -k <W_i, u(ts_i)> at every save time.
    decay = sd.models.exponential_decay()
    ts = tf.constant([DECAY_T0, 0.7, DECAY_T1], F64)
    w = np.array([[1.0, 0.5], [-0.3, 0.2], [0.6, -1.0]])
    with tf.GradientTape() as tape:
        tape.watch(ts)
        prob = sd.ODEProblem(decay.f, tf.constant(DECAY_U0, F64), (DECAY_T0, DECAY_T1), tf.constant(DECAY_K, F64))
        sol = sd.solve(prob, sd.Tsit5(), saveat=ts, sensealg=SENSEALGS[name], rtol=1e-9, atol=1e-11)
        loss = tf.reduce_sum(sol.u * w)
    u_exact = np.exp(-DECAY_K * (ts.numpy() - DECAY_T0))[:, None] * DECAY_U0
    assert_close(f"{name} dL/dts", tape.gradient(loss, ts).numpy(), -DECAY_K * np.sum(w * u_exact, axis=1), 1e-7)
