"""Tests of the Keras layers `sensode.keras.NeuralODE` and `sensode.keras.DEQ`.

The neural ODE's gradients with every sensitivity algorithm against an
independent reference: a hand-written fixed-step RK4 loop differentiated by
TensorFlow. The DEQ layer, training, saving, export and misuse are in
`test_keras_training.py`. Models are tiny so that the file runs in a few
minutes on a CPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sensode
from sensode.keras import NeuralODE

from keras_models import mlp

TIGHT = dict(rtol=1e-8, atol=1e-10, max_steps=400)


@keras.saving.register_keras_serializable(package="sensode_tests")
class TimeField(keras.layers.Layer):
    """``du/dt = W2 tanh(W1 [u, t] + b1)``, called as ``field(t, u)``."""

    def __init__(self, width, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.width, self.hidden = width, hidden
        self.inner = keras.layers.Dense(hidden, activation="tanh", dtype=self.dtype_policy)
        self.outer = keras.layers.Dense(width, dtype=self.dtype_policy)

    def call(self, t, u):
        tt = tf.ones_like(u[:, :1]) * tf.cast(t, u.dtype)
        return self.outer(self.inner(tf.concat([u, tt], axis=-1)))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "hidden": self.hidden}


def rk4_reference(field, u0, times, t1, time_dependent, steps_per_unit=100):
    """Fixed-step RK4 through ``times`` (scaled to end at ``t1``), in plain TF ops."""
    t0 = times[0]
    scale = (t1 - t0) / (times[-1] - t0)
    call = (lambda t, u: field(t, u)) if time_dependent else (lambda t, u: field(u))
    out, u, t = [u0], u0, tf.constant(t0, u0.dtype)
    for a, b in zip(times[:-1], times[1:]):
        n = int(round((b - a) * steps_per_unit))
        h = (b - a) * scale / n
        for _ in range(n):
            k1 = call(t, u)
            k2 = call(t + h / 2, u + h / 2 * k1)
            k3 = call(t + h / 2, u + h / 2 * k2)
            k4 = call(t + h, u + h * k3)
            u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t = t + h
        out.append(u)
    return tf.stack(out, axis=1)  # [B, T, D]


ALL_SENSEALGS = [
    sensode.DiscreteAdjoint(),
    sensode.DiscreteAdjoint(checkpoints=3),
    sensode.ForwardSensitivity(),
    sensode.BacksolveAdjoint(),
    sensode.InterpolatingAdjoint(),
    sensode.QuadratureAdjoint(),
]
CASES = {
    "autonomous": dict(t=(0.0, 1.0)),
    "time_seq_aug_t1": dict(
        t=(0.0, 0.5, 1.0), time_dependent=True, return_sequences=True, augment_dim=1, trainable_t1=True
    ),
}


def _layer_grads(case, sensealg, x, weights):
    kw = CASES[case]
    width = 2 + kw.get("augment_dim", 0)
    field = TimeField(width, dtype="float64") if kw.get("time_dependent") else mlp(width, "float64")
    layer = NeuralODE(field, sensealg=sensealg, dtype="float64", **TIGHT, **kw)
    layer.build(x.shape)
    field_values, t1_value = weights
    for v, value in zip(field.weights, field_values):
        v.assign(value)
    if t1_value is not None:
        layer.t1.assign(t1_value)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=True)
        loss = tf.reduce_sum(tf.sin(3.0 * out))
    variables = [x] + field.trainable_variables + ([layer.t1] if layer.t1 is not None else [])
    return layer, out, tape.gradient(loss, variables)


@pytest.fixture(scope="module")
def reference():
    """Outputs and gradients of the hand-written RK4, per case."""
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 2)), tf.float64)
    refs = {}
    for case, kw in CASES.items():
        width = 2 + kw.get("augment_dim", 0)
        field = TimeField(width, dtype="float64") if kw.get("time_dependent") else mlp(width, "float64")
        if kw.get("time_dependent"):
            field(tf.zeros([], tf.float64), tf.zeros([1, width], tf.float64))  # builds it
        t1 = tf.Variable(kw["t"][-1], dtype=tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(x)
            u0 = tf.pad(x, [[0, 0], [0, kw.get("augment_dim", 0)]])
            seq = rk4_reference(field, u0, kw["t"], t1, kw.get("time_dependent", False))
            out = seq if kw.get("return_sequences") else seq[:, -1]
            loss = tf.reduce_sum(tf.sin(3.0 * out))
        variables = [x] + field.trainable_variables + ([t1] if kw.get("trainable_t1") else [])
        grads = tape.gradient(loss, variables)
        values = ([v.numpy() for v in field.weights], t1.numpy() if kw.get("trainable_t1") else None)
        refs[case] = (out.numpy(), grads, values)
    return x, refs


def _rel_err(a, b):
    return float(tf.norm(tf.cast(a, tf.float64) - b) / (tf.norm(b) + 1e-300))


_COMPUTED = {}


def _layer_grads_once(case, sensealg, x, weights):
    """`_layer_grads`, computed once per (case, algorithm) in this module (the inputs are the fixture's)."""
    key = (case, repr(sensealg))
    if key not in _COMPUTED:
        _COMPUTED[key] = _layer_grads(case, sensealg, x, weights)
    return _COMPUTED[key]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sensealg", ALL_SENSEALGS, ids=lambda s: repr(s))
def test_layer_gradients_match_reference(reference, case, sensealg):
    x, refs = reference
    out_ref, grads_ref, values = refs[case]
    layer, out, grads = _layer_grads_once(case, sensealg, x, values)
    np.testing.assert_allclose(out.numpy(), out_ref, rtol=1e-7, atol=1e-8)
    # Discrete adjoints are exact for the computed numbers; continuous ones
    # agree to the adjoint tolerance (here 1e-8), both then differ from RK4
    # only by the discretisation errors.
    for g, g_ref in zip(grads, grads_ref):
        assert _rel_err(g, g_ref) < 1e-5
    assert int(layer.last_nfe.numpy()) > 0
    if CASES[case].get("trainable_t1"):
        assert any(v is layer.t1 for v in layer.trainable_variables)


@pytest.mark.parametrize("sensealg", ALL_SENSEALGS[1:], ids=lambda s: repr(s))
def test_layer_gradients_match_discrete_adjoint(reference, sensealg):
    x, refs = reference
    values = refs["time_seq_aug_t1"][2]
    _, _, g_ref = _layer_grads_once("time_seq_aug_t1", sensode.DiscreteAdjoint(), x, values)
    _, _, g = _layer_grads_once("time_seq_aug_t1", sensealg, x, values)
    # Checkpoints restart the solve at the cuts and forward sensitivities take
    # part in step-size control: every method computes slightly different
    # numbers, agreeing to the tolerance (1e-8).
    for a, b in zip(g, g_ref):
        assert _rel_err(a, b) < 1e-6
