"""Robertson's gradients through stiff solves with matrix-free Krylov solves (GMRES, BiCGStab).

Reference: SciPy Radau on the state and its forward sensitivity equations at
rtol 1e-11 (`stiff_references.py`). Split from `test_stiff_krylov.py`: each
file is a process, and each process keeps every XLA program it compiled.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import sensode as sd
from stiff_references import SENS_REF, _sens_grad

GMRES, BiCGStab = sd.linsolve.GMRES, sd.linsolve.BiCGStab


@pytest.mark.parametrize("method,sensealg,jit_compile", [
    (sd.Rodas5(linsolve=GMRES(restart=3)), sd.DiscreteAdjoint(), True),  # the recorded JVP of f under XLA
    (sd.Rodas5(linsolve=GMRES(restart=12)), sd.ForwardSensitivity(), True),  # Krylov on the whole augmented system
    (sd.Rodas5(linsolve=GMRES(restart=3)), sd.InterpolatingAdjoint(), True),  # the backward adjoint ODE, matrix-free
    (sd.Rodas5(linsolve=BiCGStab()), sd.DiscreteAdjoint(), False),
], ids=["Rodas5-discrete-xla", "Rodas5-forward-xla", "Rodas5-interpolating-xla", "Rodas5-BiCGStab-discrete-graph"])
# Kvaerno5 with GMRES through the discrete adjoint in a plain graph: test_stiff_krylov.py (with a variable read in f).
def test_krylov_robertson_sensitivities(method, sensealg, jit_compile):
    # Under XLA, the discrete adjoint differentiates the recorded J x* of each solve: Robertson's f slices u,
    # whose forward-mode JVP (a function call per op) XLA could not differentiate (fixed: two reverse passes).
    np.testing.assert_allclose(_sens_grad(method, sensealg, jit_compile=jit_compile), SENS_REF, rtol=1e-5)
