"""A small deep-equilibrium classifier with `sensode.keras.DEQ`.

Two interleaved moons. The model is ``Dense(16) -> DEQ -> Dense(1, sigmoid)``
with the equilibrium cell ``z -> tanh(z W + x U + b)``: one weight-tied layer
"applied infinitely often", whose fixed point is found by Anderson
acceleration and differentiated by the implicit adjoint (one linear solve per
backward pass, whatever the number of iterations).

Usage:
  python examples/deq_classifier.py --epochs=30 --state_size=16 --alg=anderson
"""

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import sensode
from sensode.keras import DEQ

EPOCHS = flags.DEFINE_integer("epochs", 30, "training epochs")
N = flags.DEFINE_integer("n", 512, "training points (a multiple of the batch size)")
BATCH = flags.DEFINE_integer("batch_size", 64, "batch size")
STATE = flags.DEFINE_integer("state_size", 16, "size of the equilibrium state z")
ALG = flags.DEFINE_enum("alg", "anderson", ["anderson", "newton"], "fixed-point solver")
SEED = flags.DEFINE_integer("seed", 0, "random seed")


@keras.saving.register_keras_serializable(package="sensode_examples")
class TanhCell(keras.layers.Layer):
    """``cell(z, x) = tanh(z W + x U + b)``; ``W`` starts small, so the cell starts contractive."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.zpath = keras.layers.Dense(
            units, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=0.3 / np.sqrt(units))
        )
        self.xpath = keras.layers.Dense(units)

    def build(self, z_shape, x_shape):
        self.zpath.build(z_shape)
        self.xpath.build(x_shape)

    def call(self, z, x):
        return tf.tanh(self.zpath(z) + self.xpath(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def moons(n, rng, noise=0.1):
    half = n // 2
    a = rng.uniform(0, np.pi, half)
    b = rng.uniform(0, np.pi, n - half)
    upper = np.stack([np.cos(a), np.sin(a)], 1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)
    x = np.concatenate([upper, lower]) + noise * rng.normal(size=(n, 2))
    y = np.concatenate([np.zeros(half), np.ones(n - half)])[:, None]
    return x.astype("float32"), y.astype("float32")


def main(argv):
    del argv
    keras.utils.set_random_seed(SEED.value)
    rng = np.random.default_rng(SEED.value)
    x, y = moons(N.value, rng)
    x_test, y_test = moons(512, rng)
    alg = sensode.AndersonAcceleration() if ALG.value == "anderson" else sensode.NewtonRaphson()
    deq = DEQ(TanhCell(STATE.value), state_size=STATE.value, alg=alg, abstol=1e-3, reltol=1e-3, max_iters=40)
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(STATE.value), deq, keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH.value, epochs=EPOCHS.value, verbose=0)
    _, train_acc = model.evaluate(x, y, batch_size=BATCH.value, verbose=0)
    _, test_acc = model.evaluate(x_test, y_test, batch_size=BATCH.value, verbose=0)
    print(f"train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}")
    print(f"{ALG.value} iterations of the last solve: {int(deq.last_iterations.numpy())} (max_iters 40)")


if __name__ == "__main__":
    app.run(main)
