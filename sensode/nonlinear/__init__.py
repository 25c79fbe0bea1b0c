"""Nonlinear and steady-state solves: linear solvers (`linsolve`), Newton,
Newton--Krylov, Anderson and DynamicSS (`methods`), and the entry point with
the implicit adjoint of ``f(u, p) = 0`` (`implicit`)."""
