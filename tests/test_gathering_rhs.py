"""A right-hand side that gathers and concatenates, with every kind of sensitivity algorithm.

``tf.gather`` makes gradients `tf.IndexedSlices` (they broke the continuous
adjoints' loops and conds); forward sensitivities with a Rosenbrock method
failed on a gather (a forward-mode tangent in ``t`` through the traced
system) and, under XLA, on a ``tf.concat`` (pfor's unbounded fallback loop).
Reference: the closed form of ``u_i' = -k_i u_i``. In a file of its own: its
compiled programs would add 0.6 GB to another file's process.

Also: a right-hand side that broadcasts (``sin(w t) * u``, ``c * sum(u)``) under
the discrete adjoint of a stiff method under XLA, whose backward program did
not compile (the Jacobian's and ``df/dt``'s forward-mode products), and one
that compares its state (``tf.where(u > 0, ...)``) under forward
sensitivities with a stiff method, which failed to trace; and a periodic
shift (``tf.roll(u, 1, axis=-1)``), whose vectorised products were wrong
without an error (TensorFlow's pfor rule for a negative roll axis).
"""

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd

from reference_problems import SENSEALGS, assert_close

F64 = tf.float64

GATHER_K = np.array([0.4, 1.3])


@pytest.mark.parametrize("name,alg,from_variable", [("forward", sd.Rodas5, False), ("backsolve", sd.Tsit5, True),
                                                    ("interpolating", sd.Rodas5, False)])
def test_f_gathering_from_its_state_parameters_and_a_variable(name, alg, from_variable):
    # u_i' = -k_i u_i, k gathered from p or from a variable, u gathered and concatenated.
    u0 = tf.constant([1.0, 2.0], F64)
    p = tf.constant(GATHER_K, F64)
    kv = tf.Variable(GATHER_K, dtype=F64)
    ts = np.array([0.5, 1.0])
    w = np.array([1.0, -0.5])

    def f(t, u, p):
        k = tf.gather(kv if from_variable else p, [0, 1])
        ext = tf.concat([tf.gather(u, [0, 1]), tf.ones_like(u[:1])], axis=0)
        return -k * ext[:2] * ext[2]

    with tf.GradientTape() as tape:
        tape.watch([u0, p])
        prob = sd.ODEProblem(f, u0, (0.0, 1.0), None if from_variable else p)
        sol = sd.solve(prob, alg(), sensealg=SENSEALGS[name], saveat=tf.constant(ts, F64), rtol=1e-9, atol=1e-11)
        loss = tf.reduce_sum(sol.u * w)
    dk, du0 = tape.gradient(loss, [kv if from_variable else p, u0])
    e = np.exp(-np.outer(ts, GATHER_K))  # [T, 2]
    want_dk = -(ts[:, None] * e).sum(axis=0) * w * u0.numpy()
    assert_close(f"{name} dL/dk", tf.convert_to_tensor(dk).numpy(), want_dk, 1e-6)
    assert_close(f"{name} dL/du0", du0.numpy(), e.sum(axis=0) * w, 1e-6)


@pytest.mark.parametrize("alg", [sd.Rodas5, sd.Kvaerno5])
def test_discrete_adjoint_under_xla_of_f_that_broadcasts(alg):
    # u' = (-k + sin(w t)) u + c sum(u): a scalar of t and a sum of u broadcast
    # against the state. The backward program failed to compile before ("Tile_grad/
    # Reshape must be a compile-time constant"): the forward-mode products inside the
    # Jacobian and df/dt (Rodas5) are differentiated there. The identity part commutes
    # with the all-ones part, so with n states and s = sum(u0):
    # u(t) = exp(-k t + (1 - cos w t) / w) (u0 + (exp(c n t) - 1) / n s 1).
    u0 = tf.constant([1.0, 0.5, -0.25], F64)
    k, w, c, t1 = 1.2, 3.0, 0.4, 1.5
    weights = np.array([1.0, -2.0, 0.5])

    def f(t, u, p):
        return (-p[0] + tf.sin(p[1] * t)) * u + p[2] * tf.reduce_sum(u, axis=-1, keepdims=True)

    @tf.function(jit_compile=True)
    def loss_and_grads(u0, p):
        with tf.GradientTape() as tape:
            tape.watch([u0, p])
            sol = sd.solve(sd.ODEProblem(f, u0, (0.0, t1), p), alg(), saveat=[t1], rtol=1e-10, atol=1e-12,
                           sensealg=sd.DiscreteAdjoint())
            loss = tf.reduce_sum(sol.u[-1] * weights)
        return loss, tape.gradient(loss, [u0, p])

    loss, (g_u0, g_p) = loss_and_grads(u0, tf.constant([k, w, c], F64))
    n, y0 = 3, u0.numpy()
    e = np.exp(-k * t1 + (1 - np.cos(w * t1)) / w)
    grow = np.exp(c * n * t1)
    u = e * (y0 + (grow - 1) / n * y0.sum())
    du_dw = u * (t1 * np.sin(w * t1) / w - (1 - np.cos(w * t1)) / w**2)
    du_dc = e * t1 * grow * y0.sum() * np.ones(n)
    np.testing.assert_allclose(loss.numpy(), weights @ u, rtol=1e-8)
    np.testing.assert_allclose(g_p.numpy(), [weights @ (-t1 * u), weights @ du_dw, weights @ du_dc], rtol=1e-7)
    np.testing.assert_allclose(g_u0.numpy(), e * (weights + (grow - 1) / n * weights.sum()), rtol=1e-7)


def test_forward_sensitivity_stiff_of_f_that_compares_its_state():
    # u_i' = -c_i k u_i with c_i = 1 where u_i > 0, else 2 (the sign never changes):
    # u_i = u0_i exp(-c_i k t). The coupling product (second derivatives of f) was two
    # nested forward-mode accumulators, which fail to trace through the comparison
    # (IndexError inside TensorFlow), in every mode that builds a graph.
    u0 = tf.constant([1.0, -0.5], F64)
    k, t1, w = 0.7, 2.0, np.array([1.0, 3.0])
    c = np.array([1.0, 2.0])

    def f(t, u, p):
        return tf.where(u > 0, -p[0] * u, -2.0 * p[0] * u)

    @tf.function(jit_compile=True)
    def loss_and_grads(u0, p):
        with tf.GradientTape() as tape:
            tape.watch([u0, p])
            sol = sd.solve(sd.ODEProblem(f, u0, (0.0, t1), p), sd.Rodas5(), saveat=[t1], rtol=1e-10, atol=1e-12,
                           sensealg=sd.ForwardSensitivity())
            loss = tf.reduce_sum(sol.u[-1] * w)
        return loss, tape.gradient(loss, [u0, p])

    loss, (g_u0, g_p) = loss_and_grads(u0, tf.constant([k], F64))
    decay = np.exp(-c * k * t1)
    u = u0.numpy() * decay
    np.testing.assert_allclose(loss.numpy(), w @ u, rtol=1e-8)
    np.testing.assert_allclose(g_p.numpy(), [w @ (-c * t1 * u)], rtol=1e-7)
    np.testing.assert_allclose(g_u0.numpy(), w * decay, rtol=1e-7)


@pytest.mark.parametrize("alg,jit", [(sd.Tsit5, True), (sd.Rodas5, False)], ids=["Tsit5-xla", "Rodas5-graph"])
def test_forward_sensitivity_of_f_with_a_periodic_shift(alg, jit):
    # u' = -k u + c roll(u, 1, axis=-1) on a batched state [2, 3]: u(t) = expm(A t) u0 per row,
    # A = -k I + c P (P the cyclic shift), dL/dk = -t w.u and dL/dc = t w.(P u) (P commutes with A).
    # ForwardSensitivity's vectorised products rolled along the batch of directions instead
    # (pfor's rule took axis -1 + 1 = 0): dL/dk was -1.08 for -2.20 on one row, no error.
    from scipy.linalg import expm

    u0 = np.array([[1.0, 0.5, 0.8], [0.2, -0.4, 1.1]])
    k, c, t1 = 0.9, 0.6, 1.5
    w = np.array([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]])

    def f(t, u, p):
        return -p[0] * u + p[1] * tf.roll(u, 1, axis=-1)

    @tf.function(jit_compile=jit)
    def loss_and_grad(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = sd.solve(sd.ODEProblem(f, tf.constant(u0), (0.0, t1), p), alg(), saveat=[t1], rtol=1e-10,
                           atol=1e-12, sensealg=sd.ForwardSensitivity())
            loss = tf.reduce_sum(sol.u[-1] * w)
        return loss, tape.gradient(loss, p)

    loss, g = loss_and_grad(tf.constant([k, c], F64))
    P = np.roll(np.eye(3), 1, axis=0)  # (P u)_i = u_{i-1}, as tf.roll(u, 1)
    u = u0 @ expm((-k * np.eye(3) + c * P) * t1).T
    np.testing.assert_allclose(loss.numpy(), np.sum(w * u), rtol=1e-8)
    np.testing.assert_allclose(g.numpy(), [-t1 * np.sum(w * u), t1 * np.sum(w * (u @ P.T))], rtol=1e-7)
