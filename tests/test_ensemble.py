"""Ensemble solves (`gsa.solve_ensemble`): per-sample stepping against single solves (values, statuses and step
counts), failures per sample, compaction, eager / graph / XLA, bad input, several devices.

Gradients are in test_ensemble_gradients.py: one test file per process, and the compiled programs of all the
ensemble tests together took 4.7 GB in one."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import gsa

from ensemble_cases import LV, OPTS, TS, _assert_matches_single, _params, _single

# --- ensembles ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "graph", "xla", "xla_map"])
def test_ensemble_matches_single_solves_step_for_step(mode):
    # eager / graph / xla: the native batched loop; xla_map: map_fn of single solves.
    p = _params()
    kw = dict(vectorize="map") if mode == "xla_map" else {}
    if mode == "eager":
        sol = gsa.solve_ensemble(LV, p=p, **OPTS, **kw)
    else:
        fn = tf.function(lambda p: gsa.solve_ensemble(LV, p=p, **OPTS, **kw), jit_compile=mode != "graph")
        sol = fn(tf.constant(p))
    assert sol.u.shape == (4, 6, 2)
    refs = [_single(p[i]) for i in range(4)]
    _assert_matches_single(sol, p, refs)
    assert len({int(r.stats["steps"]) for r in refs}) > 1  # the samples did step differently
    np.testing.assert_array_equal(sol.status, 0)


@pytest.mark.parametrize(
    "alg, opts",
    [
        (sd.DP8(), {}),  # extra dense stages and the two-part error norm
        (sd.BS3(), dict(saveat=tf.constant([0.0, 0.37, 0.4, 0.4, 5.0, 10.0], tf.float64))),  # repeated save times
        (sd.DP5(), dict(saveat=None, dtmax=0.3)),
        (sd.RK4(), dict(dt=0.05)),  # fixed step
        (sd.Tsit5(), dict(dt=1e-3, dtmin=1e-9)),  # a given first step
    ],
)
def test_native_loop_methods_match_single_solves(alg, opts):
    p = _params(3, seed=2)
    o = dict(OPTS, alg=alg, **opts)
    sol = gsa.solve_ensemble(LV, p=p, vectorize="native", **o)
    del o["alg"]
    _assert_matches_single(sol, p, alg=alg, **o)


def test_native_loop_backwards_in_time_and_u0_batch():
    prob = sd.ODEProblem(LV.f, LV.u0, (10.0, 0.0), LV.p)
    ts = tf.linspace(tf.constant(10.0, tf.float64), 0.0, 5)
    u0 = np.array([[1.0, 1.0], [0.5, 2.0], [2.0, 0.3]])
    sol = gsa.solve_ensemble(prob, u0=u0, saveat=ts, rtol=1e-6, atol=1e-8)
    for i in range(3):
        ref = sd.solve(sd.ODEProblem(LV.f, tf.constant(u0[i]), (10.0, 0.0), LV.p), saveat=ts, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sol.u[i], ref.u, rtol=1e-11, atol=1e-11)
        assert int(sol.stats["steps"][i]) == int(ref.stats["steps"])


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_native_loop_failures_are_per_sample(mode):
    # Sample 1 exceeds max_steps, sample 2 underflows its step (DT_MIN, as in its own
    # single solve), sample 3 has a NaN parameter; samples 0 and 4 are unaffected.
    p = np.array([np.asarray(LV.p), [15.0, 0.5, 0.5, 0.4], [0.2635112, 1.53299895, 29.68398637, 7.5961118],
                  [np.nan, 1.0, 3.0, 1.0], np.asarray(LV.p) * 0.7])
    opts = dict(OPTS, max_steps=400)
    fn = tf.function(lambda p: gsa.solve_ensemble(LV, p=p, throw=False, **opts), jit_compile=mode == "xla")
    sol = fn(tf.constant(p))
    S = sd.Status
    assert list(sol.status.numpy()) == [0, int(S.MAX_STEPS), int(S.DT_MIN), int(S.NONFINITE), 0]
    _assert_matches_single(sol, p, max_steps=400)


@pytest.mark.parametrize("compact", [True, False])
def test_native_loop_compacted_tail_matches_single_solves(compact):
    # B = 64: once at most 4 samples run, they finish in a compacted batch of 4
    # (the slowest samples, and one that stops at max_steps, run there); without
    # compaction the whole batch runs to the end, with the same results.
    p = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(3).uniform(-0.5, 0.5, size=(64, 4))
    p[5] = [15.0, 0.5, 0.5, 0.4]
    opts = dict(OPTS, max_steps=400)
    sol = gsa.solve_ensemble(LV, p=p, throw=False, compact=compact, **opts)
    steps = sol.stats["steps"].numpy()
    check = sorted(set(np.argsort(steps)[-4:]) | {0, 1, 5})
    assert int(sol.status[5]) == int(sd.Status.MAX_STEPS) and np.sum(sol.status.numpy() != 0) == 1
    _assert_matches_single(sol.__class__(t=sol.t, u=tf.gather(sol.u, check), status=tf.gather(sol.status, check),
                                         stats={k: tf.gather(v, check) for k, v in sol.stats.items()}),
                           p[check], max_steps=400)


def test_ode_model_compacts_a_long_tail_only_when_one_appears():
    # ODEModel without `compact`: the whole batch runs in one compiled loop; a
    # second program (the slow samples compacted) is compiled only for a batch
    # whose last samples still need many steps. Values as single solves either way.
    states = lambda t, u: tf.reshape(u, [tf.shape(u)[0], -1])  # noqa: E731
    model = gsa.ODEModel(LV, states, saveat=TS, rtol=1e-6, atol=1e-8, max_steps=400, batch_size=64)
    resumes = model._f_resume.experimental_get_tracing_count

    near = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(4).uniform(-0.05, 0.05, size=(64, 4))
    y = model(near)
    assert resumes() == 0  # similar samples: their tail is short, no second program
    for i in (0, 31, 63):
        np.testing.assert_allclose(y[i], np.reshape(_single(near[i], max_steps=400).u, -1), rtol=1e-11, atol=1e-11)

    far = _params(64, seed=3)
    far[5] = [15.0, 0.5, 0.5, 0.4]  # stops at max_steps, long after the others
    y = model(far)
    assert resumes() == 1 and model.failed == 1
    assert np.all(np.isnan(y[5]))
    steps = gsa.solve_ensemble(LV, p=far, throw=False, **dict(OPTS, max_steps=400)).stats["steps"].numpy()
    for i in sorted(set(np.argsort(steps)[-4:]) | {0, 1}):  # the compacted samples and two others
        ref = _single(far[i], max_steps=400)
        if int(ref.status) == 0:
            np.testing.assert_allclose(y[i], np.reshape(ref.u, -1), rtol=1e-11, atol=1e-11)
        else:
            assert i == 5 and np.all(np.isnan(y[i]))


def test_eager_ensemble_compacts_a_long_tail_only_when_one_appears(monkeypatch):
    # solve_ensemble called eagerly with the default compact="auto" and no tape: one loop (compact="defer");
    # the compacted tail (resume_batched) is a second program, traced only for a batch whose slow samples are
    # far from done. Under a tape "auto" is compact=True. Values, statuses and stats are those of compact=True.
    from sensode.gsa import ensemble

    built = []  # the loops traced, in order (integrate_batched / resume_batched run only while tracing)
    integrate, resume = ensemble.integrate_batched, ensemble.resume_batched
    monkeypatch.setattr(ensemble, "_EAGER_CACHE", {})
    monkeypatch.setattr(ensemble, "integrate_batched", lambda *a, **k: built.append(k["compact"]) or integrate(*a, **k))
    monkeypatch.setattr(ensemble, "resume_batched", lambda *a, **k: built.append("resume") or resume(*a, **k))
    opts = dict(OPTS, max_steps=400)

    def assert_same(sol, ref):
        np.testing.assert_array_equal(sol.status, ref.status)
        for k in ("nfe", "steps", "accepted", "rejected"):
            np.testing.assert_array_equal(sol.stats[k], ref.stats[k])
        np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)  # NaN rows in the same places

    near = np.asarray(LV.p)[None] * 10 ** np.random.default_rng(4).uniform(-0.05, 0.05, size=(64, 4))
    sol = gsa.solve_ensemble(LV, p=near, **opts)
    assert built == ["defer"]  # similar samples: their tail is short, one loop
    pt = tf.constant(near)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        taped = gsa.solve_ensemble(LV, p=pt, **opts)
        loss = tf.reduce_sum(taped.u[:, -1])
    assert built == ["defer", True]  # a tape records: the program of compact=True
    assert np.all(np.isfinite(tape.gradient(loss, pt)))
    ref = gsa.solve_ensemble(LV, p=near, compact=True, **opts)
    assert built == ["defer", True]  # the same program as under the tape
    assert_same(sol, ref)
    assert_same(taped, ref)
    np.testing.assert_array_equal(sol.status, 0)

    far = _params(64, seed=3)
    far[5] = [15.0, 0.5, 0.5, 0.4]  # stops at max_steps, long after the others
    sol = gsa.solve_ensemble(LV, p=far, throw=False, **opts)
    assert built == ["defer", True, "resume"]  # the compacted tail, traced now
    assert_same(sol, gsa.solve_ensemble(LV, p=far, throw=False, compact=True, **opts))
    assert int(sol.status[5]) == int(sd.Status.MAX_STEPS) and np.sum(sol.status.numpy() != 0) == 1
    assert np.all(np.isnan(sol.u[5]))
    with pytest.raises(sd.SolverError, match="1 of 64 samples failed; sample 5: MAX_STEPS"):
        gsa.solve_ensemble(LV, p=far, **opts)
    assert built == ["defer", True, "resume"]  # nothing traced again


def test_ensemble_in_tf_function_with_u0_batch():
    u0 = np.array([[1.0, 1.0], [0.5, 2.0], [2.0, 0.3]])
    sol = tf.function(lambda u0: gsa.solve_ensemble(LV, u0=u0, **OPTS))(tf.constant(u0))
    for i in range(3):
        ref = _single(np.asarray(LV.p), u0[i])
        np.testing.assert_allclose(sol.u[i], ref.u, rtol=1e-11, atol=1e-11)
        assert int(sol.stats["steps"][i]) == int(ref.stats["steps"])


def test_failing_sample_is_isolated():
    p = _params(3)
    p[1, 0] = np.nan
    with pytest.raises(sd.SolverError, match="1 of 3 samples failed"):
        gsa.solve_ensemble(LV, p=p, **OPTS)
    pt = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        sol = gsa.solve_ensemble(LV, p=pt, throw=False, sensealg=sd.ForwardSensitivity(), **OPTS)
        loss = tf.reduce_sum(tf.where(tf.math.is_finite(sol.u), sol.u, 0.0) ** 2)
    grad = tape.gradient(loss, pt).numpy()
    assert list(sol.status.numpy()) == [0, int(sd.Status.NONFINITE), 0]
    assert np.all(np.isnan(sol.u[1])) and np.all(np.isnan(grad[1]))
    for i in (0, 2):
        np.testing.assert_allclose(sol.u[i], _single(p[i]).u, rtol=1e-11, atol=1e-11)
        assert np.all(np.isfinite(grad[i]))


def test_shared_stepping_one_step_count():
    p = _params(3)
    sol = gsa.solve_ensemble(LV, p=p, stepping="shared", **OPTS)
    assert len(set(sol.stats["steps"].numpy())) == 1
    for i in range(3):
        np.testing.assert_allclose(sol.u[i], _single(p[i]).u, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(), ValueError, "give `u0`"),
        (dict(p=np.ones((3, 5))), ValueError, "leaf of `p`"),
        (dict(p=np.ones((3, 4)), u0=np.ones((2, 2))), ValueError, "batch size"),
        (dict(p=np.ones((3, 4)), stepping="local"), ValueError, "`stepping`"),
        (dict(p=np.ones((3, 4)), vectorize="loop"), ValueError, "`vectorize`"),
        (dict(p=np.ones((3, 4)), sensealg="adjoint"), TypeError, "`sensealg`"),
        (dict(p=np.ones((3, 4)), compact="yes"), ValueError, "`compact`"),
        (dict(p=np.ones((3, 4)), compact="defer"), ValueError, "`compact`"),
        (dict(p=np.ones((3, 4)), compact=1), TypeError, "`compact`"),
        (dict(p=np.ones((3, 4)), alg=sd.Rosenbrock23(), vectorize="native"), ValueError, "explicit Runge-Kutta"),
    ],
)
def test_ensemble_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        gsa.solve_ensemble(LV, **kwargs)


# --- several devices ------------------------------------------------------------

_MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import sensode as sd
    from sensode import gsa
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)
    p = np.asarray(prob.p)[None] * np.random.default_rng(0).uniform(0.5, 1.5, size=(6, 4))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    sol = gsa.solve_ensemble_distributed(strategy, prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    ref = gsa.solve_ensemble(prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    assert sol.u.shape == (6, 6, 2), sol.u.shape
    np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sol.stats["steps"], ref.stats["steps"])
    # A second call with new values runs the cached program (XLA per replica): no new trace.
    again = gsa.solve_ensemble_distributed(strategy, prob, p=p * 1.01, saveat=ts, rtol=1e-6, atol=1e-8)
    (_, run), = gsa.distributed._CACHE.values()
    assert run.experimental_get_tracing_count() == 1, run.experimental_get_tracing_count()
    np.testing.assert_allclose(again.u, gsa.solve_ensemble(prob, p=p * 1.01, saveat=ts, rtol=1e-6, atol=1e-8).u,
                               rtol=1e-12, atol=1e-12)
    print("OK")
    """
)


def test_mirrored_strategy_splits_the_ensemble():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


_MULTI_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG names the two local workers
    import sensode as sd
    from sensode import gsa
    prob = sd.models.lotka_volterra()
    ts = tf.linspace(tf.constant(0.0, tf.float64), 10.0, 6)
    p = np.asarray(prob.p)[None] * np.random.default_rng(0).uniform(0.5, 1.5, size=(7, 4))  # 7: one padded
    sol = gsa.solve_ensemble_distributed(strategy, prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    ref = gsa.solve_ensemble(prob, p=p, saveat=ts, rtol=1e-6, atol=1e-8)
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    assert sol.u.shape == (7, 6, 2), sol.u.shape
    np.testing.assert_allclose(sol.u, ref.u, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sol.stats["steps"], ref.stats["steps"])
    print("OK", json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    """
)


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_strategy_splits_the_ensemble_across_two_processes():
    # Two local worker processes on loopback addresses, as on two machines: each gets half the
    # samples, the results are all-gathered and equal a single-process ensemble on every worker.
    import json

    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-c", _MULTI_WORKER], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for index, (proc, (out, err)) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0 and f"OK {index}" in out, out[-2000:] + err[-4000:]
