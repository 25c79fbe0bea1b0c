"""Failures and bad input: every case asserts the error type and the message."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd

from reference_problems import decay_problem, lv_problem

F64 = tf.float64
F32 = tf.float32


def _decay(u0=None, tspan=(0.0, 1.0), p=None, f=None):
    u0 = tf.constant([1.0, 2.0], F64) if u0 is None else u0
    p = tf.constant(0.5, F64) if p is None else p
    return sd.ODEProblem(f or (lambda t, u, p: -p * u), u0, tspan, p)


def _blow_up(tspan=(0.0, 2.0)):
    # u' = u^2, u(0) = 1: u = 1 / (1 - t) blows up at t = 1.
    return sd.ODEProblem(lambda t, u, p: u * u, tf.constant([1.0], F64), tspan)


def _nan_after(t_bad, dtype=F64):
    def f(t, u, p):
        return tf.where(t > t_bad, tf.constant(np.nan, dtype), -u)

    return sd.ODEProblem(f, tf.constant([1.0], dtype), (0.0, 1.0))


MAX_STEPS_MSG = "the step limit `max_steps` was reached"
DT_MIN_MSG = "the step size fell below the minimum `dtmin`"
NONFINITE_MSG = "non-finite values (NaN or Inf)"

# --- solver failures: status codes and SolverError ------------------------------------

FAILURES = {
    # name: (problem factory, solve kwargs, expected status, message)
    "max_steps_adaptive": (lambda: lv_problem(), dict(alg=sd.Tsit5(), max_steps=5), sd.Status.MAX_STEPS, MAX_STEPS_MSG),
    "max_steps_fixed": (lambda: _decay(), dict(alg=sd.RK4(), dt=0.1, max_steps=3), sd.Status.MAX_STEPS, MAX_STEPS_MSG),
    "blow_up": (_blow_up, dict(alg=sd.DP5()), sd.Status.DT_MIN, DT_MIN_MSG),
    "dtmin": (lambda: _decay(tspan=(0.0, 2.0)), dict(alg=sd.DP5(), rtol=1e-10, atol=1e-12, dtmin=0.5), sd.Status.DT_MIN, DT_MIN_MSG),
    "nan_fixed": (lambda: _nan_after(0.5), dict(alg=sd.RK4(), dt=0.1), sd.Status.NONFINITE, NONFINITE_MSG),
    # Adaptive: a non-finite step is rejected and the step shrinks; when it can
    # shrink no more the status is NONFINITE (not DT_MIN).
    "nan_adaptive": (lambda: _nan_after(0.5), dict(alg=sd.DP5()), sd.Status.NONFINITE, NONFINITE_MSG),
    "nan_at_t0": (lambda: _nan_after(-1.0), dict(alg=sd.Tsit5()), sd.Status.NONFINITE, NONFINITE_MSG),
    "nan_in_u0": (lambda: _decay(u0=tf.constant([1.0, np.nan], F64)), dict(alg=sd.Tsit5()), sd.Status.NONFINITE, NONFINITE_MSG),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_raises_solver_error_in_eager_mode(case):
    make, kwargs, status, message = FAILURES[case]
    kwargs = dict(kwargs)
    alg = kwargs.pop("alg")
    with pytest.raises(sd.SolverError) as info:
        sd.solve(make(), alg, **kwargs)
    assert message in str(info.value)
    assert f"status {int(status)}" in str(info.value)
    assert repr(alg) in str(info.value)
    assert info.value.status == status


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_status_without_throw(case):
    make, kwargs, status, message = FAILURES[case]
    kwargs = dict(kwargs)
    alg = kwargs.pop("alg")
    sol = sd.solve(make(), alg, throw=False, **kwargs)
    assert int(sol.status) == status
    assert sol.message.startswith(message)
    assert not bool(sol.success)
    s = {k: int(v) for k, v in sol.stats.items()}
    assert s["steps"] == s["accepted"] + s["rejected"]
    if status == sd.Status.MAX_STEPS:
        assert s["steps"] == kwargs["max_steps"]


def test_failure_details():
    # Blow-up at t = 1: the solve gets close to it, not past it.
    sol = sd.solve(_blow_up(), sd.DP5(), throw=False)
    assert int(sol.stats["rejected"]) > 0
    # NaN at t0: caught before any step.
    sol = sd.solve(_nan_after(-1.0), sd.Tsit5(), throw=False)
    assert int(sol.stats["steps"]) == 0
    # dtmin below what the tolerance needs is harmless.
    sol = sd.solve(_decay(tspan=(0.0, 2.0)), sd.DP5(), rtol=1e-10, atol=1e-12, dtmin=1e-3)
    assert int(sol.status) == 0


@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize("case", ["max_steps_adaptive", "blow_up", "nan_fixed", "nan_adaptive"])
def test_status_is_readable_inside_tf_function(case, jit):
    make, kwargs, status, _ = FAILURES[case]
    kwargs = dict(kwargs)
    alg = kwargs.pop("alg")
    messages = []

    @tf.function(jit_compile=jit)
    def run():
        sol = sd.solve(make(), alg, throw=True, **kwargs)  # a graph never raises
        messages.append(sol.message)
        return sol.status, sol.success

    code, success = run()
    assert int(code) == status and not bool(success)
    assert "symbolic" in messages[0]


def test_solver_error_is_a_runtime_error():
    assert issubclass(sd.SolverError, RuntimeError)
    assert sd.Status.SUCCESS == 0 and len({int(s) for s in sd.Status}) == len(sd.Status)


# --- bad input: raised at once, naming the argument ------------------------------------


def _wrong_shape(t, u, p):
    return tf.concat([u, u], 0)


def _wrong_dtype(t, u, p):
    return tf.cast(-u, F32)


def _wrong_rank(t, u, p):
    return -u[None]


BAD_INPUT = {
    # name: (callable raising, error type, fragments of the message)
    "f_wrong_shape": (lambda: sd.solve(_decay(f=_wrong_shape), sd.Tsit5()), ValueError, ["`f` returned shape (4,)", "(2,)"]),
    "f_wrong_rank": (lambda: sd.solve(_decay(f=_wrong_rank), sd.Tsit5()), ValueError, ["`f` returned shape (1, 2)"]),
    "f_wrong_dtype": (lambda: sd.solve(_decay(f=_wrong_dtype), sd.Tsit5()), TypeError, ["`f` returned dtype float32", "float64"]),
    "f_returns_none": (lambda: sd.solve(_decay(f=lambda t, u, p: None), sd.Tsit5()), TypeError, ["`f` must return a tensor"]),
    "f_not_callable": (lambda: sd.ODEProblem("f", tf.constant([1.0], F64), (0.0, 1.0)), TypeError, ["`f` must be callable"]),
    "u0_int": (lambda: _decay(u0=tf.constant([1, 2])), TypeError, ["`u0` must have a floating dtype", "int32"]),
    "u0_python_ints": (lambda: sd.odeint(lambda t, u, p: -u, [1, 2], [0.0, 1.0]), TypeError, ["`u0` must have a floating dtype"]),
    "u0_string": (lambda: _decay(u0="abc"), TypeError, ["`u0` must"]),
    "u0_dict": (lambda: _decay(u0={"a": tf.constant([1.0], F64)}), TypeError, ["`u0` must be one floating tensor", "dict", "concatenate"]),
    "u0_ragged_list": (lambda: _decay(u0=[tf.constant([1.0], F64), tf.constant([1.0, 2.0], F64)]), TypeError,
                       ["`u0` must be one floating tensor", "list"]),
    "p_dtype": (lambda: sd.solve(_decay(p=tf.constant(0.5, F32)), sd.Tsit5()), TypeError, ["dtype mismatch", "`p`", "float32", "float64"]),
    "p_nested_dtype": (
        lambda: sd.solve(_decay(p={"k": tf.constant(0.5, F64), "c": [tf.constant(1.0, F32)]}, f=lambda t, u, p: -p["k"] * u), sd.Tsit5()),
        TypeError,
        ["dtype mismatch", "`p['c'][0]`", "float32"],
    ),
    "tspan_dtype": (lambda: sd.solve(_decay(tspan=(tf.constant(0.0, F32), tf.constant(1.0, F32))), sd.Tsit5()), TypeError, ["dtype mismatch", "`tspan`", "float32"]),
    "saveat_dtype": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([0.0, 1.0], F32)), TypeError, ["dtype mismatch", "`saveat`"]),
    "odeint_t_dtype": (lambda: sd.odeint(lambda t, u, p: -u, tf.constant([1.0], F64), tf.constant([0.0, 1.0], F32)), TypeError, ["dtype mismatch", "`t` has dtype float32"]),
    "dt_dtype": (lambda: sd.solve(_decay(), sd.RK4(), dt=tf.constant(0.1, F32)), TypeError, ["dtype mismatch", "`dt`"]),
    "tspan_inf": (lambda: sd.solve(_decay(tspan=(0.0, np.inf)), sd.Tsit5()), ValueError, ["`tspan` must be finite"]),
    "tspan_nan": (lambda: sd.solve(_decay(tspan=(np.nan, 1.0)), sd.Tsit5()), ValueError, ["`tspan` must be finite"]),
    "tspan_empty": (lambda: sd.solve(_decay(tspan=(1.0, 1.0)), sd.Tsit5()), ValueError, ["`tspan` is empty"]),
    "tspan_length": (lambda: _decay(tspan=(0.0, 1.0, 2.0)), ValueError, ["`tspan` must have exactly two entries"]),
    "tspan_not_pair": (lambda: _decay(tspan=1.0), TypeError, ["`tspan` must be a pair"]),
    "odeint_t_empty": (lambda: sd.odeint(lambda t, u, p: -u, tf.constant([1.0], F64), tf.constant([1.0], F64)), ValueError, ["`t` must be a 1-D tensor of at least two times"]),
    "saveat_after_t1": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([0.0, 1.5], F64)), ValueError, ["`saveat` times must lie inside tspan", "1.5"]),
    "saveat_before_t0": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([-0.1, 0.5], F64)), ValueError, ["`saveat` times must lie inside tspan"]),
    "saveat_backwards_outside": (lambda: sd.solve(_decay(tspan=(1.0, 0.0)), sd.Tsit5(), saveat=tf.constant([1.2, 0.5], F64)), ValueError, ["`saveat` times must lie inside tspan"]),
    "saveat_not_monotone": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([0.0, 0.6, 0.4], F64)), ValueError, ["`saveat` must be monotone", "increasing"]),
    "saveat_wrong_direction": (lambda: sd.solve(_decay(tspan=(1.0, 0.0)), sd.Tsit5(), saveat=tf.constant([0.2, 0.8], F64)), ValueError, ["`saveat` must be monotone", "decreasing"]),
    "saveat_2d": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([[0.5]], F64)), ValueError, ["`saveat` must be a 1-D tensor"]),
    "saveat_empty": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.zeros([0], F64)), ValueError, ["`saveat` must contain at least one time"]),
    "saveat_nan": (lambda: sd.solve(_decay(), sd.Tsit5(), saveat=tf.constant([0.0, np.nan], F64)), ValueError, ["`saveat` must be finite"]),
    "rtol_zero": (lambda: sd.solve(_decay(), sd.Tsit5(), rtol=0.0), ValueError, ["`rtol` must be positive"]),
    "rtol_negative": (lambda: sd.solve(_decay(), sd.Tsit5(), rtol=-1e-6), ValueError, ["`rtol` must be positive"]),
    "rtol_nan": (lambda: sd.solve(_decay(), sd.Tsit5(), rtol=np.nan), ValueError, ["`rtol` must be positive and finite"]),
    "atol_zero": (lambda: sd.solve(_decay(), sd.Tsit5(), atol=0.0), ValueError, ["`atol` must be positive"]),
    "atol_tensor_negative_entry": (lambda: sd.solve(_decay(), sd.Tsit5(), atol=tf.constant([1e-6, -1e-6], F64)), ValueError, ["`atol` must be positive"]),
    "atol_none": (lambda: sd.solve(_decay(), sd.Tsit5(), atol=None), ValueError, ["`atol` must be a positive number"]),
    "fixed_step_without_dt": (lambda: sd.solve(_decay(), sd.RK4()), ValueError, ["`dt` is required", "RK4()", "fixed-step"]),
    "odeint_fixed_step_without_dt": (lambda: sd.odeint(lambda t, u, p: -u, tf.constant([1.0], F64), [0.0, 1.0], alg=sd.Euler()), ValueError, ["`dt` is required", "Euler()"]),
    "dt_zero": (lambda: sd.solve(_decay(), sd.RK4(), dt=0.0), ValueError, ["`dt` must be positive and finite"]),
    "dt_negative": (lambda: sd.solve(_decay(), sd.Euler(), dt=-0.1), ValueError, ["`dt` must be positive and finite"]),
    "max_steps_zero": (lambda: sd.solve(_decay(), sd.Tsit5(), max_steps=0), ValueError, ["`max_steps` must be a positive Python int"]),
    "max_steps_float": (lambda: sd.solve(_decay(), sd.Tsit5(), max_steps=100.0), ValueError, ["`max_steps` must be a positive Python int"]),
    "unknown_option": (lambda: sd.solve(_decay(), sd.Tsit5(), rtoll=1e-3), TypeError, ["rtoll"]),
    "odeint_unknown_option": (lambda: sd.odeint(lambda t, u, p: -u, tf.constant([1.0], F64), [0.0, 1.0], method="dopri5"), TypeError, ["method"]),
    "odeint_saveat": (lambda: sd.odeint(lambda t, u, p: -u, tf.constant([1.0], F64), [0.0, 1.0], saveat=[0.5]), TypeError, ["`saveat`", "`t`"]),
    "positional_options": (lambda: sd.solve(_decay(), sd.Tsit5(), None, 0.1), TypeError, ["positional"]),
    "alg_not_a_method": (lambda: sd.solve(_decay(), "tsit5"), TypeError, ["`alg` must be an ODE method"]),
    "alg_class_not_instance": (lambda: sd.solve(_decay(), sd.Tsit5), TypeError, ["`alg` must be an ODE method"]),
    "prob_not_a_problem": (lambda: sd.solve(lambda t, u, p: -u, sd.Tsit5()), TypeError, ["`prob` must be an ODEProblem"]),
    "controller_wrong_type": (lambda: sd.solve(_decay(), sd.Tsit5(), controller="pi"), TypeError, ["`controller` must be a sensode.PIController"]),
    "controller_bad_factors": (lambda: sd.PIController(factor_min=2.0), ValueError, ["factor_min < 1 < factor_max"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input(case):
    call, error, fragments = BAD_INPUT[case]
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("case", ["f_wrong_shape", "f_wrong_dtype", "p_dtype", "saveat_not_monotone", "rtol_zero", "fixed_step_without_dt"])
def test_bad_input_raises_while_tracing(case):
    # Static problems are caught while tracing a tf.function, not left to a status.
    call, error, fragments = BAD_INPUT[case]
    with pytest.raises(error) as info:
        tf.function(call)()
    assert fragments[0] in str(info.value)


def test_symbolic_values_are_left_to_the_status():
    # Inside tf.function a symbolic rtol cannot be checked while tracing; the
    # solve must still trace and run.
    @tf.function(input_signature=[tf.TensorSpec([], F64)])
    def run(rtol):
        return sd.solve(decay_problem(), sd.Tsit5(), rtol=rtol).status

    assert int(run(tf.constant(1e-6, F64))) == 0


def test_python_float_tolerances_are_exact_in_float64():
    # tf.cast of a Python float rounds through float32 (1e-9 -> 9.9999997e-10).
    from sensode.ode import control, loop
    from sensode.validation import check_tolerance

    assert float(check_tolerance(1e-9, "rtol", tf.float64)) == 1e-9
    ctx = loop._context(lambda t, y: y, None, sd.Tsit5(), control.SolveOptions(rtol=1e-9, atol=1e-13, dtmin=1e-11),
                        [tf.constant([1.0], tf.float64)], 0.0, 1.0, None, None, None, None, False, True)
    assert (float(ctx.rtol), float(ctx.atol), float(ctx.dtmin)) == (1e-9, 1e-13, 1e-11)
