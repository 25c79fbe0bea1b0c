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


@pytest.mark.parametrize("method,sensealg", [
    (sd.Rodas5(linsolve=GMRES(restart=3)), sd.DiscreteAdjoint()),
    (sd.Rodas5(linsolve=GMRES(restart=12)), sd.ForwardSensitivity()),  # Krylov on the whole augmented system
    (sd.Rodas5(linsolve=GMRES(restart=3)), sd.InterpolatingAdjoint()),  # the backward adjoint ODE, matrix-free
    (sd.Kvaerno5(linsolve=GMRES(restart=3)), sd.DiscreteAdjoint()),
    (sd.Rodas5(linsolve=BiCGStab()), sd.DiscreteAdjoint()),
], ids=["Rodas5-discrete", "Rodas5-forward", "Rodas5-interpolating", "Kvaerno5-discrete", "Rodas5-BiCGStab-discrete"])
def test_krylov_robertson_sensitivities(method, sensealg):
    np.testing.assert_allclose(_sens_grad(method, sensealg), SENS_REF, rtol=1e-5)
