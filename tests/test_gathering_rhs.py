"""A right-hand side that gathers and concatenates, with every kind of sensitivity algorithm.

``tf.gather`` makes gradients `tf.IndexedSlices` (they broke the continuous
adjoints' loops and conds); forward sensitivities with a Rosenbrock method
failed on a gather (a forward-mode tangent in ``t`` through the traced
system) and, under XLA, on a ``tf.concat`` (pfor's unbounded fallback loop).
Reference: the closed form of ``u_i' = -k_i u_i``. In a file of its own: its
compiled programs would add 0.6 GB to another file's process.
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
