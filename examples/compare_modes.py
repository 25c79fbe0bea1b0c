"""Compare every sensitivity algorithm on a named problem and loss, as a script.

The library call behind ``python -m sensode.compare``: here on Lotka--Volterra
(or ``--problem``) with the loss ``sum((u - u_target)^2)`` against a target
trajectory, printing the table and writing JSON (and a PNG if matplotlib is
installed).

Usage:
  python examples/compare_modes.py --problem=lotka_volterra --jit=false --reps=3
"""

import numpy as np
import tensorflow as tf
from absl import app, flags

from sensode import compare, models

PROBLEM = flags.DEFINE_enum("problem", "lotka_volterra", sorted(models.PROBLEMS), "Named problem.")
JIT = flags.DEFINE_bool("jit", False, "Compile with XLA (slower to compile, faster to run).")
REPS = flags.DEFINE_integer("reps", 3, "Timed calls per algorithm.")
T1 = flags.DEFINE_float("t1", 3.0, "Final time.")
JSON_OUT = flags.DEFINE_string("json_out", "compare_modes.json", "JSON output path.")
PNG = flags.DEFINE_string("png", "compare_modes.png", "Figure path (only if matplotlib is installed).")


def main(argv):
    del argv
    prob = models.PROBLEMS[PROBLEM.value](tspan=(0.0, T1.value))
    saveat = np.linspace(0.0, T1.value, 7)
    target = 0.9 * tf.ones([7] + prob.u0.shape.as_list(), prob.u0.dtype)
    result = compare.compare_sensitivities(
        prob, lambda u: tf.reduce_sum(tf.square(u - target)), saveat=saveat, reps=REPS.value,
        jit_compile=JIT.value, progress=print,
    )
    print(result)
    with open(JSON_OUT.value, "w") as fh:
        fh.write(result.to_json())
    print(f"wrote {JSON_OUT.value}")
    try:
        result.plot(PNG.value)
        print(f"wrote {PNG.value}")
    except ImportError as e:
        print(f"(no figure: {e})")


if __name__ == "__main__":
    app.run(main)
