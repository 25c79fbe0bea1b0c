"""Eager calls through the compiled cache, and dense-record lookups.

References: the op-by-op path (``compile=False``) and the closed form of
exponential decay for the cache; NumPy's ``searchsorted`` for the lookups.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
import sensode.api
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


def _decay_f(t, u, p):
    return -p * u


def _decay(tspan=(0.0, 2.0), p=0.7):
    return sd.ODEProblem(_decay_f, tf.constant([1.0, -2.0], F64), tspan, tf.constant(p, F64))


@pytest.fixture
def prepared(monkeypatch):
    """Counts the eager calls that went through full validation (`prepare_ode_solve`), i.e. missed the fast path."""
    calls = []
    prepare = sensode.api.prepare_ode_solve

    def counting(*args, **kwargs):
        if tf.executing_eagerly():  # not the traced solve inside the compiled function
            calls.append(1)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(sensode.api, "prepare_ode_solve", counting)
    return calls


def test_repeated_eager_calls_skip_validation_and_match_the_first(prepared):
    ts = tf.constant([0.0, 0.5, 2.0], F64)
    kw = dict(saveat=ts, rtol=1e-9, atol=1e-11)
    first = sd.solve(_decay(), sd.Tsit5(), **kw)
    again = sd.solve(_decay(p=1.3), sd.Tsit5(), **kw)  # a new problem object, new p: the fast path
    same_values = sd.solve(_decay(p=1.3), sd.Tsit5(), saveat=tf.constant([0.0, 0.5, 2.0], F64), rtol=1e-9,
                           atol=1e-11)  # a new saveat tensor with the same values
    assert len(prepared) == 1
    np.testing.assert_allclose(first.u.numpy(), decay_exact(ts.numpy(), k=0.7), rtol=1e-7)
    np.testing.assert_allclose(again.u.numpy(), decay_exact(ts.numpy(), k=1.3), rtol=1e-7)
    np.testing.assert_array_equal(same_values.u.numpy(), again.u.numpy())
    assert again.t is ts and again.alg == sd.Tsit5() and int(again.stats["steps"]) > 0
    # New values of a validated input: validated again, then fast.
    other = tf.constant([0.0, 1.0, 1.5], F64)
    for _ in range(2):
        sol = sd.solve(_decay(), sd.Tsit5(), saveat=other, rtol=1e-9, atol=1e-11)
    assert len(prepared) == 2
    np.testing.assert_allclose(sol.u.numpy(), decay_exact(other.numpy(), k=0.7), rtol=1e-7)
    # Sensitivities through the fast path, against the closed form du/dk = -t u.
    fs = [sd.forward_sensitivities(_decay(p=k), sd.Tsit5(), **kw) for k in (0.7, 0.9)]
    du_dk = -ts.numpy()[:, None] * decay_exact(ts.numpy(), k=0.9)
    np.testing.assert_allclose(fs[1].du_dp.numpy(), du_dk, rtol=1e-6, atol=1e-9)
    g = tf.ones_like(first.u)
    adj = [sd.adjoint_sensitivities(first, dgdu_discrete=g, rtol=1e-9, atol=1e-11) for _ in range(2)]
    np.testing.assert_array_equal(adj[0].dp.numpy(), adj[1].dp.numpy())
    np.testing.assert_allclose(float(adj[1].dp), np.sum(-ts.numpy()[:, None] * decay_exact(ts.numpy(), k=0.7)),
                               rtol=1e-6)
    assert len(prepared) == 4  # one validation per new structure
    # (A gradient through a fast call: test_eager_solve_is_traced_once_and_matches_op_by_op.)


def test_numpy_saveat_changed_in_place_is_validated_again(prepared):
    saveat = np.array([0.0, 0.5, 1.0])
    sd.solve(_decay(), sd.Tsit5(), saveat=saveat)
    saveat[1] = 0.25  # arrays are compared by value, not identity
    sol = sd.solve(_decay(), sd.Tsit5(), saveat=saveat, rtol=1e-3)
    assert len(prepared) == 2
    np.testing.assert_array_equal(sol.t.numpy(), [0.0, 0.25, 1.0])
    saveat[1] = 3.0
    with pytest.raises(ValueError, match="`saveat` times must lie inside tspan"):
        sd.solve(_decay(), sd.Tsit5(), saveat=saveat)


_WARM = dict(saveat=tf.constant([0.0, 0.5, 2.0], F64), rtol=1e-6, atol=1e-8, max_steps=1000)
# name: (valid call that warms the cache, the same structure with bad values, error, message)
WARM_BAD = {
    "tspan_empty": ({}, dict(tspan=(2.0, 2.0)), ValueError, "`tspan` is empty"),
    "tspan_nan": ({}, dict(tspan=(np.nan, 2.0)), ValueError, "`tspan` must be finite"),
    "tspan_tensor_nan": (dict(tspan=(tf.constant(0.0, F64), tf.constant(2.0, F64))),
                         dict(tspan=(tf.constant(0.0, F64), tf.constant(np.nan, F64))), ValueError,
                         "`tspan` must be finite"),
    "tspan_shorter_than_saveat": ({}, dict(tspan=(0.0, 1.0)), ValueError, "`saveat` times must lie inside tspan"),
    "saveat_outside": ({}, dict(saveat=tf.constant([0.0, 0.5, 2.5], F64)), ValueError,
                       "`saveat` times must lie inside tspan"),
    "saveat_not_monotone": ({}, dict(saveat=tf.constant([0.0, 1.5, 1.0], F64)), ValueError,
                            "`saveat` must be monotone"),
    "saveat_nan": ({}, dict(saveat=tf.constant([0.0, np.nan, 1.0], F64)), ValueError, "`saveat` must be finite"),
    "saveat_dtype": ({}, dict(saveat=tf.constant([0.0, 0.5, 1.0], tf.float32)), TypeError, "dtype mismatch"),
    "rtol_negative": ({}, dict(rtol=-1e-6), ValueError, "`rtol` must be positive"),
    "rtol_nan": ({}, dict(rtol=np.nan), ValueError, "`rtol` must be positive and finite"),
    "rtol_numpy_scalar": (dict(rtol=np.float64(1e-6)), dict(rtol=np.float64(-1e-6)), ValueError,
                          "`rtol` must be positive"),
    "atol_tensor_zero": (dict(atol=tf.constant(1e-8, F64)), dict(atol=tf.constant(0.0, F64)), ValueError,
                         "`atol` must be positive"),
    "dt_negative": (dict(dt=0.1), dict(dt=-0.1), ValueError, "`dt` must be positive and finite"),
    "max_steps_bool": (dict(max_steps=1, throw=False), dict(max_steps=True), ValueError,
                       "`max_steps` must be a positive Python int"),
    "p_dtype": ({}, dict(p=tf.constant(0.5, tf.float32)), TypeError, "dtype mismatch"),
}


@pytest.mark.parametrize("case", sorted(WARM_BAD))
def test_bad_input_on_a_warm_cache_still_raises(case, prepared):
    good, bad, error, message = WARM_BAD[case]

    def call(**kw):
        kw = {**_WARM, **kw}
        prob = sd.ODEProblem(_decay_f, tf.constant([1.0, -2.0], F64), kw.pop("tspan", (0.0, 2.0)),
                             kw.pop("p", tf.constant(0.7, F64)))
        return sd.solve(prob, sd.Tsit5(), **kw)

    call(**good)
    prepared.clear()
    call(**good)
    assert not prepared  # a warm cache: the fast path
    with pytest.raises(error, match=message):
        call(**{**good, **bad})
    assert len(prepared) == 1  # the bad values were validated
    call(**good)  # and the entry still serves the valid ones
    assert len(prepared) == 1


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


def test_eager_calls_with_a_new_state_shape_compile_again():
    # The same f, method and options with a batched u0: another program, not the first one reused.
    ts = tf.constant([0.0, 0.5, 2.0], F64)
    prob = sd.ODEProblem(lambda t, u, p: -p * u, tf.constant([1.0, -2.0], F64), (0.0, 2.0), tf.constant(0.7, F64))
    batch = tf.constant([[1.0, -2.0], [0.5, 3.0], [2.0, 0.0]], F64)
    for u0 in (prob.u0, prob.u0, batch, batch, prob.u0):  # first, fast-path and full-path calls of each shape
        sol = sd.solve(prob.remake(u0=u0), sd.Tsit5(), saveat=ts, rtol=1e-10, atol=1e-12)
        assert sol.u.shape == (3, *u0.shape)
        expected = u0.numpy()[None] * np.exp(-0.7 * ts.numpy()).reshape([-1] + [1] * u0.shape.rank)
        np.testing.assert_allclose(sol.u.numpy(), expected, rtol=1e-8, atol=1e-12)



def test_new_numpy_parameter_values_reuse_the_compiled_function():
    # A NumPy parameter vector is a differentiable input: a new value must run the same program (every new value
    # compiled again, 1.2 s a call, when arrays were keyed by their bytes), with its own result.
    from sensode import compiled

    compiled._CACHE.clear()
    prob = sd.ODEProblem(lambda t, u, p: -p[0] * u + p[1], tf.constant([1.0, -2.0], F64), (0.0, 2.0), np.array([0.7, 0.0]))
    for k in (0.7, 1.3, 0.2):
        sol = sd.solve(prob.remake(p=np.array([k, 0.0])), sd.Tsit5(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sol.u.numpy()[-1], np.array([1.0, -2.0]) * np.exp(-2.0 * k), rtol=1e-8)
    assert len(compiled._CACHE) == 1

# As the command lines do it: --xla_cache read before absl starts (enabling it
# inside main, after absl's start-up, is too late in TensorFlow 2.21).
_CACHE_SCRIPT = """
import sys
from absl import app, flags
from sensode import compilation_cache
flags.DEFINE_string("xla_cache", None, "cache")
compilation_cache.from_argv(sys.argv)

def main(argv):
    import sensode
    sol = sensode.solve(sensode.models.lotka_volterra(), saveat=[0.0, 5.0, 10.0], rtol=1e-9, atol=1e-9)
    print(compilation_cache.active_directory())
    print(repr(float(sol.u[-1, 0])))

app.run(main)
"""


def test_compilation_cache_is_written_then_reused_by_a_second_process(tmp_path):
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "SENSODE_XLA_CACHE")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"

    def run():
        out = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, f"--xla_cache={cache}"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    first = run()
    assert first[0] == str(cache)
    written = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert written, "the first process wrote no compiled program"
    second = run()
    assert second == first  # same directory, same value (to the last bit)
    # A miss would have compiled again and rewritten (or added) a file.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == written
    assert float(first[1]) == pytest.approx(1.0263447675753106, rel=1e-6)  # SciPy DOP853 at rtol 1e-12


def test_compilation_cache_too_late_or_bad_input(tmp_path, monkeypatch):
    tf.constant(1.0)  # TensorFlow's runtime has started in this process
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    with pytest.warns(RuntimeWarning, match="before the first TensorFlow operation"):
        assert sd.enable_compilation_cache(tmp_path) is None
    assert "TF_XLA_FLAGS" not in os.environ
    with pytest.raises(TypeError, match="directory"):
        sd.enable_compilation_cache(3)
    monkeypatch.setenv("SENSODE_XLA_CACHE", "off")
    assert sd.enable_compilation_cache() is None
    monkeypatch.setenv("TF_XLA_FLAGS", f"--tf_xla_persistent_cache_directory={tmp_path}")
    assert sd.enable_compilation_cache("/elsewhere") == str(tmp_path)  # the environment's choice is kept


def test_importing_sensode_leaves_tensorflow_configurable():
    # Device and thread settings (and TF_XLA_FLAGS) are fixed once TensorFlow's
    # runtime starts; importing sensode and its front-ends must not start it.
    script = (
        "import tensorflow as tf\n"
        "import sensode, sensode.keras, sensode.compare, sensode.gsa, sensode.gsa.__main__\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"  # RuntimeError once started
        "print('ok')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
