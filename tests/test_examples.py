"""The figures that docs/keras.md and the examples' docstrings quote hold.

Each example runs as a user runs it (``python examples/<name>.py``, in a fresh
interpreter) and its printed figures are checked against the documented ones
with a tolerance. Sizes are the documented ones where they run in well under a
minute of CPU time.
"""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_example(name, *flags, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *flags], capture_output=True, text=True, env=env,
        timeout=timeout, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def numbers(pattern, text):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return [float(g) for g in m.groups()]


def test_deq_classifier_documented_accuracy():
    # docs/keras.md: "train accuracy 1.000, test accuracy 1.000", 5 Anderson iterations, status 0.
    out = run_example("deq_classifier.py")
    train, test = numbers(r"train accuracy ([\d.]+), test accuracy ([\d.]+)", out)
    iterations, status = numbers(r"iterations of the last solve: (\d+) \(max_iters 40\), status (\d+)", out)
    assert train >= 0.99 and test >= 0.98, out
    assert status == 0 and 1 <= iterations <= 15, out


def test_spiral_documented_losses():
    # docs/keras.md: training MAE first epoch 0.3169, last 0.0345; window error 0.0169.
    out = run_example("spiral_neural_ode.py", "--out=")
    first, last, nfe = numbers(r"first epoch ([\d.]+), last epoch ([\d.]+); last nfe (\d+)", out)
    (window,) = numbers(r"window error: .* = ([\d.]+)", out)
    (rollout,) = numbers(r"rollout error: .* = ([\d.]+)", out)
    assert abs(first - 0.3169) < 0.03 and last < 0.040 and nfe > 0, out
    assert window < 0.025, out  # the noise's own MAE is 0.016
    assert rollout < 1.5, out  # finite and not a failed solve; its value varies (phase drift)


def test_neural_ode_classifier_augmentation_separates():
    # docs/keras.md: augment_dim=0 0.979 / 0.963; augment_dim=1 1.000 / 1.000.
    out = run_example("neural_ode_classifier.py")
    plain = numbers(r"augment_dim=0: train accuracy ([\d.]+), test accuracy ([\d.]+)", out)
    augmented = numbers(r"augment_dim=1: train accuracy ([\d.]+), test accuracy ([\d.]+)", out)
    assert 0.9 <= plain[0] < 0.995 and 0.9 <= plain[1], out  # a planar flow cannot separate exactly
    assert augmented[0] >= 0.99 and augmented[1] >= 0.98, out


def test_fit_steady_state_converges_to_the_truth():
    out = run_example("fit_steady_state.py")
    assert "converged=True" in out, out
    for name, truth in (("vmax", 2.0), ("km", 0.5), ("kd", 0.8)):
        (estimate,) = numbers(rf"{name}\s+([\d.]+)\s+{truth:.4f}", out)
        assert abs(estimate - truth) < 0.05 * truth, out
