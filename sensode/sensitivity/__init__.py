"""Sensitivity algorithms for ODE solves, one module each, behind the interface
of `base`: `forward`, `discrete`, `backsolve`, `interpolating`, `quadrature`
(the continuous adjoints share `adjoint_problem`), the checkpointed sweep
(`checkpoint`), the automatic choice (`choice`) and the direct sensitivity
interfaces (`direct`)."""
