"""Tests of `sensode.compare`: the comparison table, its JSON and the command line.

The gradient reference is independent of sensode: SciPy's DOP853 on the
Lotka--Volterra forward-sensitivity equations at rtol = atol = 1e-12.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import sensode as sd
from sensode import compare

from reference_problems import lotka_volterra_p_sensitivities

LV_P = (1.5, 1.0, 3.0, 1.0)
LV_U0 = (1.0, 1.0)
T1 = 1.5
SAVEAT = np.linspace(0.0, T1, 4)
ALGS = [
    sd.ForwardSensitivity(), sd.DiscreteAdjoint(), sd.DiscreteAdjoint(checkpoints=2), sd.BacksolveAdjoint(),
    sd.InterpolatingAdjoint(), sd.InterpolatingAdjoint(checkpoints=2), sd.QuadratureAdjoint(),
]


def loss(u):
    return tf.reduce_sum(tf.square(u))


def lv_sensitivity_gradient():
    """dL/dp for L = sum_i |u(t_i)|^2 by the forward-sensitivity ODE in SciPy."""
    u, S = lotka_volterra_p_sensitivities(SAVEAT, LV_U0, LV_P)
    return np.einsum("ti,tij->j", 2 * u, S)


@pytest.fixture(scope="module")
def result():
    prob = sd.models.lotka_volterra(p=LV_P, u0=LV_U0, tspan=(0.0, T1))
    return compare.compare_sensitivities(prob, loss, sensealgs=ALGS, saveat=SAVEAT, rtol=1e-6, atol=1e-8,
                                         reps=1, jit_compile=False, max_steps=500)


def test_default_sensealgs_cover_every_algorithm():
    names = {type(a).__name__ for a in compare.default_sensealgs(sd.models.lotka_volterra())}
    assert names == {"ForwardSensitivity", "DiscreteAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint"}
    # ForwardSensitivity is left out where its tangents would not fit.
    names = {type(a).__name__ for a in compare.default_sensealgs(sd.models.neural_ode_mlp())}
    assert "ForwardSensitivity" not in names
    # ... and with a stiff method beyond small problems (second derivatives per stage: long compiles);
    # never BacksolveAdjoint with a stiff method (unstable backwards: its row could only fail).
    adjoints = {"DiscreteAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint"}
    names = {type(a).__name__ for a in compare.default_sensealgs(sd.models.hires(), alg=sd.Rodas5())}
    assert names == adjoints
    names = {type(a).__name__ for a in compare.default_sensealgs(sd.models.robertson(), alg=sd.Rodas5())}
    assert names == adjoints | {"ForwardSensitivity"}


def test_every_algorithm_agrees_with_independent_reference(result):
    names = [r.sensealg for r in result.rows]
    assert names == [compare.sensealg_name(a) for a in ALGS] + ["finite differences"]
    exact = lv_sensitivity_gradient()
    # The reference itself is far more accurate than the rows' tolerance.
    np.testing.assert_allclose(result.reference_gradient, exact, rtol=1e-7)
    assert "ForwardSensitivity" in result.reference and "1e-10" in result.reference
    for r in result.rows:
        assert r.status == "ok", (r.sensealg, r.status)
        err = np.linalg.norm(np.array(r.gradient) - exact) / np.linalg.norm(exact)
        assert err <= result.tolerance, (r.sensealg, err)
        assert abs(err - r.rel_error) <= 1e-6 * np.linalg.norm(exact) + 1e-7
        assert r.time_s > 0 and r.nfe_forward > 0 and r.nfe_backward is not None


def test_backward_counts(result):
    fwd = result.row("ForwardSensitivity")
    assert fwd.nfe_backward == 0
    disc = result.row("DiscreteAdjoint")
    assert disc.nfe_backward == disc.nfe_forward
    for name in ("BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint"):
        assert result.row(name).nfe_backward > 0 and "adjoint_sensitivities" in result.row(name).nfe_note


def test_table_and_json_round_trip(result, tmp_path):
    text = str(result)
    for r in result.rows:
        assert r.sensealg in text
    header = [line for line in text.splitlines() if line.startswith("sensealg")][0]
    assert header.split() == ["sensealg", "rel_error", "time_ms", "compile_s", "nfe_fwd", "nfe_bwd", "peak_MB", "status"]
    data = json.loads(result.to_json())
    keys = {"sensealg", "gradient", "rel_error", "time_s", "compile_s", "nfe_forward", "nfe_backward",
            "peak_memory_bytes", "status"}
    assert all(keys <= set(d) for d in data)
    again = compare.Comparison.from_json(result.to_json())
    assert again == result
    assert str(again) == text


def test_plot(result, tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="matplotlib"):
            result.plot(str(tmp_path / "x.png"))
        pytest.skip("matplotlib not installed")
    result.plot(str(tmp_path / "x.png"))
    assert (tmp_path / "x.png").stat().st_size > 0


def test_user_reference_and_inaccurate_status():
    prob = sd.models.exponential_decay(k=0.5, u0=(1.0,), tspan=(0.0, 2.0))
    # L = u(2)^2 = exp(-2 k T): dL/dk = -2 T exp(-2 k T) = -4 exp(-2).
    exact = [-4.0 * np.exp(-2.0)]
    res = compare.compare_sensitivities(prob, lambda u: tf.square(u[-1, 0]), sensealgs=[sd.InterpolatingAdjoint()],
                                        reference=exact, reps=1, jit_compile=False, finite_differences=False,
                                        count_backward=False)
    assert res.reference == "user-supplied gradient" and res.rows[0].status == "ok"
    wrong = compare.compare_sensitivities(prob, lambda u: tf.square(u[-1, 0]), sensealgs=[sd.InterpolatingAdjoint()],
                                          reference=[2 * exact[0]], reps=1, jit_compile=False,
                                          finite_differences=False, count_backward=False)
    assert wrong.rows[0].status == "inaccurate" and wrong.rows[0].rel_error == pytest.approx(0.5, rel=1e-3)


def test_parse_sensealg():
    assert compare.parse_sensealg("DiscreteAdjoint(checkpoints=3)") == sd.DiscreteAdjoint(checkpoints=3)
    assert compare.parse_sensealg(" QuadratureAdjoint ") == sd.QuadratureAdjoint()
    with pytest.raises(ValueError, match="unknown sensealg"):
        compare.parse_sensealg("Adjoint")
    with pytest.raises(ValueError, match="no checkpoints"):
        compare.parse_sensealg("BacksolveAdjoint(checkpoints=2)")


def test_cli_runs(tmp_path):
    out = tmp_path / "rows.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "sensode.compare", "--problem=exponential_decay", "--saves=3", "--reps=1",
         "--jit=false", "--sensealgs=InterpolatingAdjoint,DiscreteAdjoint", f"--json_out={out}"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "InterpolatingAdjoint" in proc.stdout and "finite differences" in proc.stdout
    assert "[1/2] InterpolatingAdjoint" in proc.stderr  # progress lines
    rows = json.loads(out.read_text())
    assert [r["sensealg"] for r in rows] == ["InterpolatingAdjoint", "DiscreteAdjoint", "finite differences"]
    assert all(r["status"] == "ok" for r in rows)
