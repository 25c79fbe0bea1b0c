"""A small deep-equilibrium classifier with `sensode.keras.DEQ`.

Two interleaved moons. The model is ``Dense(16) -> DEQ -> Dense(1, sigmoid)``
with the equilibrium cell ``z -> tanh(z W + x U + b)``: one weight-tied layer
"applied infinitely often", whose fixed point is found by Anderson
acceleration and differentiated by the implicit adjoint (one linear solve per
backward pass, whatever the number of iterations).

``W`` is rescaled to Frobenius norm at most ``--contraction`` (< 1). Since
``tanh`` is 1-Lipschitz, the cell is then a contraction in ``z`` for every
input and weight value training can reach: the fixed point exists, is unique,
and the iteration converges. Without the bound, training grows ``W`` (its
spectral norm passed 1.8 by epoch 6) until Anderson acceleration no longer
converges within ``max_iters``: the layer then reports the failure (NaN loss,
``last_status == MAX_ITERS``). It used to pass the last iterate on with a NaN
gradient: the weights became NaN and the accuracy fell to 0.500.

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
CONTRACTION = flags.DEFINE_float("contraction", 0.9, "bound on the Frobenius norm of W (< 1: a contractive cell)")
MAX_ITERS = flags.DEFINE_integer("max_iters", 40, "iteration bound of the fixed-point solve")


@keras.saving.register_keras_serializable(package="sensode_examples")
class TanhCell(keras.layers.Layer):
    """``cell(z, x) = tanh(z W + x U + b)`` with ``W = V * min(1, gamma / |V|_F)``.

    ``|W|_2 <= |W|_F <= gamma < 1`` and ``tanh`` is 1-Lipschitz, so ``z -> cell(z, x)``
    is a ``gamma``-contraction whatever ``V``, ``U``, ``b`` and ``x`` are.
    """

    def __init__(self, units, gamma=0.9, **kwargs):
        super().__init__(**kwargs)
        if not 0 < gamma < 1:
            raise ValueError(f"`gamma` must be in (0, 1) for a contraction, got {gamma}")
        self.units, self.gamma = units, gamma
        self.xpath = keras.layers.Dense(units)

    def build(self, z_shape, x_shape):
        init = keras.initializers.RandomNormal(stddev=0.3 / np.sqrt(self.units))
        self.v = self.add_weight(name="v", shape=(self.units, self.units), initializer=init)
        self.xpath.build(x_shape)

    def call(self, z, x):
        w = self.v * tf.minimum(1.0, self.gamma / tf.norm(self.v))
        return tf.tanh(tf.matmul(z, w) + self.xpath(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gamma": self.gamma}


def moons(n, rng, noise=0.1):
    half = n // 2
    a = rng.uniform(0, np.pi, half)
    b = rng.uniform(0, np.pi, n - half)
    upper = np.stack([np.cos(a), np.sin(a)], 1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)
    x = np.concatenate([upper, lower]) + noise * rng.normal(size=(n, 2))
    y = np.concatenate([np.zeros(half), np.ones(n - half)])[:, None]
    return x.astype("float32"), y.astype("float32")


def train(*, epochs=30, n=512, batch_size=64, state_size=16, alg="anderson", seed=0, contraction=0.9, max_iters=40):
    """Train on ``n`` moons; returns accuracies, the last solve's iterations and status, the losses."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = moons(n, rng)
    x_test, y_test = moons(512, rng)
    solver = sensode.AndersonAcceleration() if alg == "anderson" else sensode.NewtonRaphson()
    deq = DEQ(
        TanhCell(state_size, gamma=contraction), state_size=state_size, alg=solver, abstol=1e-3, reltol=1e-3,
        max_iters=max_iters,
    )
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(state_size), deq, keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    # A failed fixed-point solve makes the loss NaN: stop there instead of training on.
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    _, train_acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    iterations, status = int(deq.last_iterations.numpy()), int(deq.last_status.numpy())  # of the training set
    _, test_acc = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    return dict(train_accuracy=train_acc, test_accuracy=test_acc, iterations=iterations, status=status,
                losses=history.history["loss"])


def main(argv):
    del argv
    r = train(epochs=EPOCHS.value, n=N.value, batch_size=BATCH.value, state_size=STATE.value, alg=ALG.value,
              seed=SEED.value, contraction=CONTRACTION.value, max_iters=MAX_ITERS.value)
    print(f"train accuracy {r['train_accuracy']:.3f}, test accuracy {r['test_accuracy']:.3f}")
    print(f"{ALG.value} iterations of the last solve: {r['iterations']} (max_iters {MAX_ITERS.value}), "
          f"status {r['status']}")


if __name__ == "__main__":
    app.run(main)
