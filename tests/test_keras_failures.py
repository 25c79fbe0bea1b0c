"""Failures of the Keras layers are never silent (issue 11).

A `NeuralODE` whose solve cannot reach ``t1`` and a `DEQ` whose cell has no
fixed point: eagerly they raise; in `tf.function` and XLA their outputs,
losses and gradients are NaN, never zeros. Split from ``test_keras.py`` so
that no test process compiles both files' programs (XLA programs stay in
memory until the process ends).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sensode
from sensode.keras import DEQ, NeuralODE

from keras_models import TanhCell, mlp


# --- failures are never silent (issue 11) -----------------------------------------

MODES = ["eager", "tf.function", "xla"]


def _run(mode, fn, *args):
    if mode == "eager":
        return fn(*args)
    return tf.function(fn, jit_compile=(mode == "xla"))(*args)


class NoFixedPoint(keras.layers.Layer):
    """``cell(z, x) = z + 1 + x^2``: ``cell(z) - z >= 1``, no fixed point anywhere."""

    def call(self, z, x):
        return z + 1.0 + tf.reduce_sum(x**2, axis=-1, keepdims=True)


def _raises_in_eager_else_nan(mode, fn, x, match, status, shape):
    """Eagerly ``fn(x)`` raises `SolverError` with ``status`` (which survives Keras
    re-raising it with added context); in graphs its output is NaN of ``shape``."""
    if mode == "eager":
        with pytest.raises(sensode.SolverError, match=match) as info:
            fn(x)
        assert info.value.status == status
    else:
        out = _run(mode, fn, x).numpy()
        assert out.shape == shape and np.all(np.isnan(out))


def _starved_ode(**kw):
    # Tight tolerances and 2 steps: the solve cannot reach t1 (Status.MAX_STEPS).
    return NeuralODE(mlp(2), rtol=1e-9, atol=1e-12, max_steps=2, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_neural_ode_failed_solve_raises_in_eager_and_is_nan_in_graphs(mode, return_sequences):
    layer = _starved_ode(return_sequences=return_sequences, t=(0.0, 0.5, 1.0))
    x = np.ones((3, 2), "float32")
    _raises_in_eager_else_nan(mode, lambda x: layer(x, training=False), x, r"status 1 \(MAX_STEPS\).*max_steps",
                              sensode.Status.MAX_STEPS, (3, 3, 2) if return_sequences else (3, 2))
    assert int(layer.last_status.numpy()) == sensode.Status.MAX_STEPS
    # A solve that succeeds resets the status.
    layer.max_steps = 1000
    out = _run(mode, lambda x: layer(x, training=False), x).numpy()
    assert np.all(np.isfinite(out)) and int(layer.last_status.numpy()) == 0


@pytest.mark.parametrize("mode", ["tf.function", "xla"])
@pytest.mark.parametrize("sensealg", [sensode.DiscreteAdjoint(), sensode.BacksolveAdjoint()], ids=repr)
def test_neural_ode_failed_solve_gives_nan_gradients(mode, sensealg):
    layer = _starved_ode(sensealg=sensealg)
    x = tf.ones((3, 2))

    def loss_and_grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            # relu passes back a zero cotangent at NaN: the layer itself must poison the gradient.
            loss = tf.reduce_sum(tf.nn.relu(layer(x, training=True)))
        return loss, tape.gradient(loss, [x] + layer.trainable_variables)

    loss, grads = _run(mode, loss_and_grads, x)
    assert np.isnan(loss.numpy())
    assert all(np.all(np.isnan(g.numpy())) for g in grads)


def test_on_failure_nan_returns_nan_in_eager_and_is_validated_and_serialised():
    layer = _starved_ode(on_failure="nan")
    out = layer(np.ones((2, 2), "float32"))
    assert np.all(np.isnan(out.numpy())) and int(layer.last_status.numpy()) == sensode.Status.MAX_STEPS
    config = layer.get_config()
    assert config["on_failure"] == "nan" and NeuralODE.from_config(config).on_failure == "nan"
    deq = DEQ(TanhCell(2), state_size=2, on_failure="nan")
    assert DEQ.from_config(deq.get_config()).on_failure == "nan"
    for bad in ("ignore", None, 0):
        with pytest.raises(ValueError, match="on_failure"):
            NeuralODE(mlp(2), on_failure=bad)
        with pytest.raises(ValueError, match="on_failure"):
            DEQ(TanhCell(2), state_size=2, on_failure=bad)


def test_fit_with_a_failing_solve_has_a_nan_loss_not_zeros():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    ode = _starved_ode(sensealg=sensode.DiscreteAdjoint())
    model = keras.Sequential([keras.Input((2,)), ode])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, x, batch_size=4, epochs=3, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert int(ode.last_status.numpy()) == sensode.Status.MAX_STEPS


@pytest.mark.parametrize("mode", MODES)
def test_deq_without_fixed_point_raises_in_eager_and_is_nan_in_graphs(mode):
    deq = DEQ(NoFixedPoint(), state_size=2, max_iters=20)
    x = np.ones((3, 2), "float32")
    _raises_in_eager_else_nan(mode, lambda x: deq(x), x, r"status 4 \(MAX_ITERS\).*max_iters=20",
                              sensode.Status.MAX_ITERS, (3, 2))
    assert int(deq.last_status.numpy()) == sensode.Status.MAX_ITERS


def test_deq_without_fixed_point_nan_gradients_and_unknown_batch():
    deq = DEQ(NoFixedPoint(), state_size=2, max_iters=20, on_failure="nan")
    x = tf.ones((3, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.relu(deq(x)))
    assert np.isnan(loss.numpy()) and np.all(np.isnan(tape.gradient(loss, x).numpy()))
    # Batches of unknown size are solved in chunks: the worst chunk's status is reported.
    infer = tf.function(lambda x: deq(x), input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    assert np.all(np.isnan(infer(tf.ones((19, 2))).numpy()))
    assert int(deq.last_status.numpy()) == sensode.Status.MAX_ITERS
