"""The ODE solver: Butcher tableaus (`tableaus`), the method protocol and the
explicit Runge--Kutta methods (`methods`, `rk`), error norms and step-size
control (`control`), dense output (`dense`) and the one stepping loop (`loop`)."""
