"""Tests of the Keras layers `sensode.keras.NeuralODE` and `sensode.keras.DEQ`.

References are independent of sensode: a hand-written fixed-step RK4 loop
differentiated by TensorFlow (neural ODE), and the closed form
``z* = x (I - W)^{-1}`` of a linear equilibrium cell ``z = z W + x``.
Models are tiny so that the whole file runs in a few minutes on a CPU.
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

from keras_models import TanhCell, mlp

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


@keras.saving.register_keras_serializable(package="sensode_tests")
class LinearCell(keras.layers.Layer):
    """``cell(z, x) = z W + x``."""

    def __init__(self, n, scale=0.2, **kwargs):
        super().__init__(**kwargs)
        self.n, self.scale = n, scale

    def build(self, z_shape, x_shape):
        init = keras.initializers.RandomNormal(stddev=self.scale / np.sqrt(self.n), seed=1)
        self.w = self.add_weight(name="w", shape=(self.n, self.n), initializer=init)

    def call(self, z, x):
        return tf.matmul(z, self.w) + x

    def get_config(self):
        return {**super().get_config(), "n": self.n, "scale": self.scale}


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


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sensealg", ALL_SENSEALGS, ids=lambda s: repr(s))
def test_layer_gradients_match_reference(reference, case, sensealg):
    x, refs = reference
    out_ref, grads_ref, values = refs[case]
    layer, out, grads = _layer_grads(case, sensealg, x, values)
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
    _, _, g_ref = _layer_grads("time_seq_aug_t1", sensode.DiscreteAdjoint(), x, values)
    _, _, g = _layer_grads("time_seq_aug_t1", sensealg, x, values)
    # Checkpoints restart the solve at the cuts and forward sensitivities take
    # part in step-size control: every method computes slightly different
    # numbers, agreeing to the tolerance (1e-8).
    for a, b in zip(g, g_ref):
        assert _rel_err(a, b) < 1e-6


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
