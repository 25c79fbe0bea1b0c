"""Eager calls through the compiled cache, and dense-record lookups.

References: the op-by-op path (``compile=False``) and the closed form of
exponential decay for the cache; NumPy's ``searchsorted`` for the lookups.
"""

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from reference_problems import decay_exact
from sensode.ode import dense

F64 = tf.float64


def test_eager_solve_is_traced_once_and_matches_op_by_op():
    traces = []

    def f(t, u, p):
        traces.append(1)  # runs at trace time only when compiled
        return -p * u

    u0 = tf.constant([1.0, -2.0], F64)
    ts = tf.constant([0.0, 0.5, 1.0, 2.0], F64)
    values = []
    for k in (0.7, 0.9, 1.3):  # new parameter values reuse the compiled function
        with tf.GradientTape() as tape:
            p = tf.constant(k, F64)
            tape.watch(p)
            sol = sd.solve(sd.ODEProblem(f, u0, (0.0, 2.0), p), sd.Tsit5(), saveat=ts, rtol=1e-9, atol=1e-11,
                           sensealg=sd.ForwardSensitivity())
            loss = tf.reduce_sum(sol.u[-1])
        values.append((sol.u.numpy(), float(tape.gradient(loss, p))))
        if k == 0.7:
            after_first = len(traces)
    assert len(traces) == after_first > 0
    for (u, g), k in zip(values, (0.7, 0.9, 1.3)):
        np.testing.assert_allclose(u, decay_exact(ts.numpy(), k=k), rtol=1e-7)
        np.testing.assert_allclose(g, -2.0 * (-1.0) * np.exp(-2.0 * k), rtol=1e-6)  # d/dk sum u(2)
    with tf.GradientTape() as tape:  # the same algorithm op by op: the same steps, the same numbers
        p = tf.constant(1.3, F64)
        tape.watch(p)
        op_by_op = sd.solve(sd.ODEProblem(f, u0, (0.0, 2.0), p), sd.Tsit5(), saveat=ts, rtol=1e-9, atol=1e-11,
                            sensealg=sd.ForwardSensitivity(), compile=False)
        loss = tf.reduce_sum(op_by_op.u[-1])
    np.testing.assert_allclose(values[-1][0], op_by_op.u.numpy(), rtol=1e-12)
    np.testing.assert_allclose(values[-1][1], float(tape.gradient(loss, p)), rtol=1e-12)


@pytest.mark.parametrize("n,count", [(10, 7), (5000, 4999), (5000, 1234), (20000, 3)])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_record_lookup_matches_searchsorted(n, count, direction):
    # Both paths: one comparison over the buffer (<= 4,096 steps) and the two-level lookup above.
    rng = np.random.default_rng(n + count)
    starts = np.sort(rng.uniform(size=n + 1)) * direction
    rec = dense.Record(tf.constant(starts), tf.ones([n], F64), [], [], tf.constant(count))
    rec = dense.finalize(rec, tf.constant(count), tf.constant(direction, F64))
    assert tf.is_tensor(rec.coarse) == (n > dense.SEARCHSORTED_MAX)
    t = np.concatenate([rng.uniform(-0.1, 1.1, size=300) * direction, starts[:count]])
    ref = np.searchsorted(direction * starts[:count], direction * t, side="right") - 1
    got = dense._step_index(rec, tf.constant(t), tf.constant(direction, F64)).numpy()
    np.testing.assert_array_equal(np.clip(got, 0, count - 1), np.clip(ref, 0, count - 1))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
def test_long_saveat_written_through_window_matches_closed_form(compiled, direction):
    # 320 save times: steps that pass a few of them (window writes), a cluster of 200 inside one step
    # (more than the window: the whole-buffer write), repeats, and both ends.
    from sensode.ode import loop

    grid = np.concatenate([np.linspace(0.0, 2.0, 117), np.linspace(0.3, 0.31, 200), [1.0, 1.0, 2.0]])
    ts_np = np.sort(grid)[:: int(direction)]
    u0 = tf.constant([1.0, -2.0, 0.5, 3.0], F64)
    assert len(ts_np) >= loop._WINDOWED_FROM and len(ts_np) * 4 >= loop._WINDOWED_WORK
    t0, t1 = (0.0, 2.0) if direction > 0 else (2.0, 0.0)
    w = tf.constant(np.random.default_rng(0).normal(size=(len(ts_np), 4)))

    def loss_and_grads(k, ts):
        with tf.GradientTape() as tape:
            tape.watch([k, ts])
            sol = sd.solve(sd.ODEProblem(lambda t, u, p: -p * u, u0, (t0, t1), k), sd.Tsit5(), saveat=ts,
                           rtol=1e-10, atol=1e-12, sensealg=sd.DiscreteAdjoint(), compile=False)
            loss = tf.reduce_sum(w * sol.u)
        return sol.u, tape.gradient(loss, [k, ts])

    run = tf.function(loss_and_grads, jit_compile=True) if compiled else loss_and_grads
    k = 0.8
    u, (dk, dts) = run(tf.constant(k, F64), tf.constant(ts_np))
    exact = u0.numpy()[None] * np.exp(-k * (ts_np - t0))[:, None]
    np.testing.assert_allclose(u.numpy(), exact, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(float(dk), np.sum(w.numpy() * exact * -(ts_np - t0)[:, None]), rtol=1e-6)
    np.testing.assert_allclose(dts.numpy(), np.sum(w.numpy() * -k * exact, axis=1), rtol=1e-6, atol=1e-9)
