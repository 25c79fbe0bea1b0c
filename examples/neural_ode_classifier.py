"""Concentric circles: a plain NeuralODE block cannot separate them, an augmented one can.

Class 0: points with ``|x| < 0.5``; class 1: the ring ``1 < |x| < 1.5``
(Dupont, Doucet & Teh, "Augmented neural ODEs", 2019). The model is
``NeuralODE -> Dense(1, sigmoid)``. The flow of an ODE in the plane is a
homeomorphism: it cannot move the inner disk out of the ring, so no linear
read-out separates the classes exactly after it (a trained model squeezes the
ring through a narrow gap and misclassifies points near it). With
``augment_dim > 0`` the flow runs in a higher-dimensional space, where it can
lift the disk out.

Usage:
  python examples/neural_ode_classifier.py --epochs=40 --augment_dim=1
"""

from absl import app, flags
import keras
import numpy as np

import sensode
from sensode.keras import NeuralODE

EPOCHS = flags.DEFINE_integer("epochs", 40, "training epochs")
N = flags.DEFINE_integer("n", 512, "number of training points (a multiple of the batch size)")
BATCH = flags.DEFINE_integer("batch_size", 64, "batch size")
AUGMENT = flags.DEFINE_integer("augment_dim", 1, "extra dimensions of the augmented model")
SEED = flags.DEFINE_integer("seed", 0, "random seed")


def circles(n, rng):
    """``n`` points, half in the disk of radius 0.5 (label 0), half in the ring 1 < r < 1.5 (label 1)."""
    half = n // 2
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.concatenate([0.5 * np.sqrt(rng.uniform(0, 1, half)), rng.uniform(1.0, 1.5, n - half)])
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype("float32")
    y = np.concatenate([np.zeros(half), np.ones(n - half)]).astype("float32")[:, None]
    return x, y


def build(augment_dim):
    width = 2 + augment_dim
    field = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(width)]
    )
    ode = NeuralODE(field, augment_dim=augment_dim, sensealg=sensode.InterpolatingAdjoint(), max_steps=200)
    model = keras.Sequential([keras.Input((2,)), ode, keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    return model, ode


def train(augment_dim, *, epochs=40, n=512, batch_size=64, seed=0):
    """Train one model on ``n`` points; returns its accuracies, the last solve's nfe and status, the losses."""
    rng = np.random.default_rng(seed)
    x, y = circles(n, rng)
    x_test, y_test = circles(512, rng)
    keras.utils.set_random_seed(seed)
    model, ode = build(augment_dim)
    # A failed solve makes the loss NaN (the layer never returns zeros): stop there.
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    nfe, status = int(ode.last_nfe.numpy()), int(ode.last_status.numpy())
    _, train_acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    _, test_acc = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    return dict(train_accuracy=train_acc, test_accuracy=test_acc, nfe=nfe, status=status,
                losses=history.history["loss"])


def main(argv):
    del argv
    for augment_dim in (0, AUGMENT.value):
        r = train(augment_dim, epochs=EPOCHS.value, n=N.value, batch_size=BATCH.value, seed=SEED.value)
        print(
            f"augment_dim={augment_dim}: train accuracy {r['train_accuracy']:.3f}, "
            f"test accuracy {r['test_accuracy']:.3f}, nfe of the last solve {r['nfe']}"
        )


if __name__ == "__main__":
    app.run(main)
