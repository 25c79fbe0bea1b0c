"""Keras benchmark: training-step time and peak memory of a `NeuralODE` model.

The model is ``NeuralODE(2 -> 64 -> 64 -> 2, tanh)`` on a batch of 512
states in R^2 (float32, t in [0, t1], rtol 1e-3, atol 1e-6, Tsit5), loss the
mean squared final state, optimizer SGD, compiled with ``jit_compile=True``.
This is a script, not a test: nothing asserts a time. One JSON line per
measurement.

* ``step``: per ``sensealg``, the median wall time of one ``train_on_batch``
  over ``--reps`` calls after the first (``first_call_s`` includes tracing
  and XLA compilation), the median time of a forward pass (``predict_on_batch``,
  the plain solver loop, also under XLA) and their ratio. The issue's target:
  an adjoint training step at most 4x the forward pass.
* ``memory`` (``--memory``): per ``sensealg`` and end time ``t1`` (more steps
  as ``t1`` grows), the peak of TensorFlow's CPU allocator during one
  training step after compilation (``tf.config.experimental.get_memory_info``).
  A flat column means memory does not grow with the number of steps. Under
  XLA the discrete adjoint's buffers are sized by ``max_steps``, not by the
  steps taken: compare it across ``--max_steps`` too.

`ForwardSensitivity` is left out by default: its tangent batch has one
direction per weight and per input entry (4,482 + 1,024 directions of
512 x 2 floats each).

Usage:
  python benchmarks/keras_benchmark.py                       # timing, about a minute per sensealg
  python benchmarks/keras_benchmark.py --memory --spans=1,4,16 --sensealgs=discrete,backsolve
"""

import json

from absl import app, flags
from timing import measure  # benchmarks/timing.py

SENSEALGS = flags.DEFINE_list(
    "sensealgs", ["discrete", "backsolve", "interpolating", "quadrature"],
    "of discrete, forward, backsolve, interpolating, quadrature",
)
REPS = flags.DEFINE_integer("reps", 5, "timed training steps after the first")
T1 = flags.DEFINE_float("t1", 1.0, "end time of the timing runs")
MAX_STEPS = flags.DEFINE_integer("max_steps", 200, "static step bound (buffer size of the XLA discrete adjoint)")
MEMORY = flags.DEFINE_bool("memory", False, "also measure peak memory against t1 (one process per point)")
SPANS = flags.DEFINE_list("spans", ["1", "4"], "end times t1 of the memory runs")


def _sensealg(name):
    import sensode

    return {
        "discrete": sensode.DiscreteAdjoint,
        "forward": sensode.ForwardSensitivity,
        "backsolve": sensode.BacksolveAdjoint,
        "interpolating": sensode.InterpolatingAdjoint,
        "quadrature": sensode.QuadratureAdjoint,
    }[name]()


def _model(name, t1, max_steps):
    import keras
    import numpy as np

    from sensode.keras import NeuralODE

    keras.utils.set_random_seed(0)
    field = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(64, activation="tanh"),
         keras.layers.Dense(2)]
    )
    ode = NeuralODE(field, t=(0.0, t1), sensealg=_sensealg(name), max_steps=max_steps)
    model = keras.Sequential([keras.Input((2,)), ode])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(512, 2)).astype("float32")
    return model, ode, x, np.zeros_like(x)


def step_times(name):
    model, ode, x, y = _model(name, T1.value, MAX_STEPS.value)
    first, step_ms, _ = measure(lambda: model.train_on_batch(x, y), REPS.value)
    nfe = int(ode.last_nfe.numpy())
    _, fwd_ms, _ = measure(lambda: model.predict_on_batch(x), REPS.value)
    return dict(
        kind="step", sensealg=name, t1=T1.value, first_call_s=round(first, 2), step_ms=round(step_ms, 2),
        forward_ms=round(fwd_ms, 2), step_over_forward=round(step_ms / fwd_ms, 2), nfe_forward=nfe,
    )


def peak_memory(name, t1):
    import tensorflow as tf

    model, ode, x, y = _model(name, t1, MAX_STEPS.value)
    model.train_on_batch(x, y)  # compile first: XLA's own buffers are not what we measure
    tf.config.experimental.reset_memory_stats("CPU:0")
    model.train_on_batch(x, y)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return dict(
        kind="memory", sensealg=name, t1=t1, max_steps=MAX_STEPS.value, nfe_forward=int(ode.last_nfe.numpy()),
        peak_mb=round(peak / 2**20, 1),
    )


def main(argv):
    del argv
    for name in SENSEALGS.value:
        print(json.dumps(step_times(name)), flush=True)
    if MEMORY.value:
        for name in SENSEALGS.value:
            for t1 in SPANS.value:
                print(json.dumps(peak_memory(name, float(t1))), flush=True)


if __name__ == "__main__":
    app.run(main)
