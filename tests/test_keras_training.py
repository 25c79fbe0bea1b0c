"""Tests of the Keras layers beyond the neural ODE's gradients (those are in `test_keras.py`).

`sensode.keras.DEQ` against the closed form ``z* = x (I - W)^{-1}`` of a linear
equilibrium cell ``z = z W + x`` and against finite differences; training
with ``model.fit`` under XLA, saving / loading, export, a MirroredStrategy on
two logical CPUs, and misuse (bad shapes, times, algorithms). Split from
`test_keras.py` so each process compiles fewer XLA programs. Models are tiny.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sensode
from sensode.keras import DEQ, NeuralODE

from keras_models import LinearCell, TanhCell, mlp


def test_deq_linear_cell_closed_form():
    n = 4
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(5, n)), tf.float64)
    g_out = rng.normal(size=(5, n))
    for alg in (None, sensode.NewtonRaphson()):
        cell = LinearCell(n, dtype="float64")
        layer = DEQ(cell, state_size=n, alg=alg, abstol=1e-13, reltol=1e-13, dtype="float64")
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = layer(x)
            loss = tf.reduce_sum(z * g_out)
        g_x, g_w = tape.gradient(loss, [x, cell.w])
        w = cell.w.numpy()
        m = np.linalg.inv(np.eye(n) - w)  # z = z W + x  =>  z = x (I - W)^{-1}
        z_ref = x.numpy() @ m
        np.testing.assert_allclose(z.numpy(), z_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g_x.numpy(), g_out @ m.T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g_w.numpy(), z_ref.T @ (g_out @ m.T), rtol=1e-9, atol=1e-12)
        assert 0 < int(layer.last_iterations.numpy()) <= 50


def test_deq_tanh_cell_finite_differences():
    n = 3
    x = tf.constant(np.random.default_rng(4).normal(size=(2, n)), tf.float64)
    layer = DEQ(TanhCell(n, dtype="float64"), state_size=n, abstol=1e-13, reltol=1e-13, dtype="float64")
    layer.build(x.shape)
    w = layer.cell.zpath.kernel

    def loss():
        return tf.reduce_sum(tf.sin(layer(x)))

    with tf.GradientTape() as tape:
        value = loss()
    g = tape.gradient(value, w).numpy()
    w0 = w.numpy()
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        bumped = w0.copy()
        bumped[i, j] += eps
        w.assign(bumped)
        up = float(loss())
        bumped[i, j] -= 2 * eps
        w.assign(bumped)
        down = float(loss())
        w.assign(w0)
        assert abs((up - down) / (2 * eps) - g[i, j]) < 1e-7


@pytest.fixture(scope="module")
def trained():
    """A model with both layers, trained for a few epochs with jit_compile=True."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype("float32")
    y = (x[:, :1] * x[:, 1:]).astype("float32")
    inp = keras.Input((2,))
    h = NeuralODE(mlp(3), sensealg=sensode.BacksolveAdjoint(), max_steps=50, augment_dim=1, name="ode")(inp)
    z = DEQ(TanhCell(4), state_size=4, max_iters=30, name="deq")(h)
    model = keras.Model(inp, keras.layers.Dense(1)(z))
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="mse", jit_compile=True)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    return model, x, history.history["loss"]


def test_fit_with_jit_compile_lowers_the_loss(trained):
    model, _, losses = trained
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert int(model.get_layer("ode").last_nfe.numpy()) > 0
    assert int(model.get_layer("deq").last_iterations.numpy()) > 0
    assert int(model.get_layer("ode").last_status.numpy()) == 0
    assert int(model.get_layer("deq").last_status.numpy()) == 0


def test_save_load_round_trip(trained, tmp_path):
    model, x, _ = trained
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ode = loaded.get_layer("ode")
    assert isinstance(ode, NeuralODE) and ode.sensealg == sensode.BacksolveAdjoint() and ode.augment_dim == 1
    assert ode.on_failure == "raise" and loaded.get_layer("deq").on_failure == "raise"
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_export_serves_predictions(trained, tmp_path):
    model, x, _ = trained
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    served = reloaded.serve(x[:19])  # 19 rows: the DEQ solves padded chunks
    np.testing.assert_allclose(served.numpy(), model(x[:19]).numpy(), rtol=1e-5, atol=1e-6)


def test_neural_ode_export_any_batch(tmp_path):
    inp = keras.Input((2,))
    model = keras.Model(inp, NeuralODE(mlp(2), return_sequences=True, t=(0.0, 0.5, 1.0))(inp))
    x = np.random.default_rng(1).normal(size=(5, 2)).astype("float32")
    model.export(str(tmp_path / "ode"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "ode"))
    served = reloaded.serve(x)
    assert served.shape == (5, 3, 2)
    np.testing.assert_allclose(served.numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.numpy()[:, 0], x, rtol=1e-6)


_MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, sensode
    from keras_models import TanhCell, mlp
    from sensode.keras import DEQ, NeuralODE
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    y = x[:, :1] * x[:, 1:]
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)),
            NeuralODE(mlp(3), sensealg=sensode.InterpolatingAdjoint(), max_steps=50, augment_dim=1),
            DEQ(TanhCell(4), state_size=4), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(2e-2), loss="mse")
    losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    print("LOSSES", losses)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    print("OK")
    """
)


def test_mirrored_strategy_two_cpus():
    # Logical devices must be configured before TensorFlow initialises them:
    # run in a fresh interpreter.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_inference_accepts_any_batch_size():
    inp = keras.Input((2,))
    model = keras.Model(inp, NeuralODE(mlp(2), sensealg=sensode.InterpolatingAdjoint())(inp))
    x = np.random.default_rng(2).normal(size=(11, 2)).astype("float32")
    assert model.predict(x, batch_size=4, verbose=0).shape == (11, 2)  # batches 4, 4, 3


# --- misuse ---------------------------------------------------------------------


def test_vector_field_with_wrong_output_shape():
    field = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="vector_field"):
        NeuralODE(field)(np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match="vector_field"):  # at model construction already
        keras.Sequential([keras.Input((2,)), NeuralODE(keras.layers.Dense(5))])


@pytest.mark.parametrize("t", [(0.0, 1.0, 0.5), (0.0, 0.0), (1.0,), [[0.0, 1.0]]])
def test_times_must_be_strictly_monotone(t):
    with pytest.raises(ValueError, match="`t`"):
        NeuralODE(mlp(2), t=t)


@pytest.mark.parametrize(
    "sensealg", [sensode.NewtonRaphson(), sensode.DiscreteAdjoint(linsolve=sensode.linsolve.LU()), "adjoint"]
)
def test_neural_ode_rejects_sensealg_that_does_not_apply(sensealg):
    with pytest.raises(TypeError, match="sensealg|linsolve"):
        NeuralODE(mlp(2), sensealg=sensealg)


def test_neural_ode_rejects_bad_alg_and_field():
    with pytest.raises(TypeError, match="alg"):
        NeuralODE(mlp(2), alg=sensode.AndersonAcceleration())
    with pytest.raises(TypeError, match="vector_field"):
        NeuralODE(lambda u: -u)


@pytest.mark.parametrize(
    "sensealg", [sensode.InterpolatingAdjoint(), sensode.BacksolveAdjoint(), sensode.DiscreteAdjoint(checkpoints=2)]
)
def test_deq_rejects_ode_sensealgs(sensealg):
    with pytest.raises(TypeError, match="sensealg|checkpoints"):
        DEQ(TanhCell(3), state_size=3, sensealg=sensealg)


def test_deq_rejects_bad_cell_and_alg():
    with pytest.raises(TypeError, match="alg"):
        DEQ(TanhCell(3), state_size=3, alg=sensode.Tsit5())
    with pytest.raises(ValueError, match="cell"):
        DEQ(TanhCell(5), state_size=3)(np.zeros((2, 3), "float32"))


def test_dynamic_batch_while_training_is_explained():
    ode = NeuralODE(mlp(2), sensealg=sensode.InterpolatingAdjoint())
    deq = DEQ(TanhCell(2), state_size=2)
    x = np.random.default_rng(5).normal(size=(21, 2)).astype("float32")
    z = deq(x).numpy()
    ode(x)
    spec = [tf.TensorSpec([None, 2], tf.float32)]
    for layer in (ode, deq):
        train = tf.function(lambda x, layer=layer: layer(x, training=True), input_signature=spec)
        with pytest.raises(ValueError, match="static batch size"):
            train.get_concrete_function()
    infer = tf.function(lambda x: deq(x), input_signature=spec)
    np.testing.assert_allclose(infer(x).numpy(), z, rtol=1e-5, atol=1e-6)
