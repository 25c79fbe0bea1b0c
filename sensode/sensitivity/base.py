"""The interface every ODE sensitivity algorithm implements, and its wiring.

An algorithm is a frozen dataclass of its own options with two methods:

* ``forward(spec, u0, ts, t0, t1, p, variables) -> ForwardPass``: the solve,
  keeping in ``aux`` what the backward pass needs;
* ``backward(spec, u0, ts, t0, t1, p, variables, aux, g_u) -> Gradients``:
  turn ``dL/du(ts)`` into gradients with respect to ``u0``, the
  differentiable leaves of ``p`` and the variables ``f`` reads.

`SensitivityAlgorithm.solve` wires the pair into `tf.custom_gradient`
(`differentiable`), so that `tf.GradientTape` reaches ``u0``, every
differentiable leaf of ``p``, ``t0``, the save times (and through them ``t1``
when ``saveat`` is None) and every `tf.Variable` read inside ``f``. An
algorithm that TensorFlow differentiates by itself (the discrete adjoint
without checkpoints) overrides `solve` instead.

Time gradients have closed forms shared by all algorithms: a save time moves
its saved state along the flow, ``dL/dts_i = <g_i, f(ts_i, u_i)>``, and
moving the start time shifts the whole trajectory,
``dL/dt0 = -<dL/du0, f(t0, u0)>``.

A failed forward solve (``status != 0``) gives NaN gradients, never finite
numbers computed from the part it reached.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np
import tensorflow as tf

from .. import tfcompat
from ..derivatives import map_batch
from ..ode.control import SolveOptions
from ..ode.linear import WithJacobian
from ..ode.loop import integrate
from ..ode.methods import ODEMethod
from ..params import Params, find_variables
from ..solution import Status, raise_if_failed

__all__ = ["Spec", "SensitivityAlgorithm", "ForwardPass", "Gradients", "differentiable", "save_time_gradients",
           "nan_if_failed"]

@dataclasses.dataclass(frozen=True)
class Spec:
    """What a solve needs besides its inputs: the checked ``f``, the method and the options."""

    f: Callable  # f(t, u, p)
    method: ODEMethod
    options: SolveOptions
    throw: bool = True  # raise (eagerly) when the backward pass fails
    jac: Callable | None = None  # the problem's checked jac(t, u, p) -> [N, N], or None (AD)

    def rhs(self, p):
        """The loop's ``fn(t, u) = f(t, u, p)``; a `WithJacobian` when the problem has ``jac``."""
        f, jac = self.f, self.jac
        fn = lambda t, u: f(t, u, p)  # noqa: E731
        return fn if jac is None else WithJacobian(fn, lambda t, u: jac(t, u, p))

    def integrate(self, fn, y0, t0, t1, *, method: ODEMethod | None = None, **kwargs):
        """`sensode.ode.loop.integrate` with this spec's method and options.

        ``kwargs`` holds loop arguments (``saveat``, ``tstops``, ``jump``,
        ``include_in_norm``, ``record``) and option overrides (any field of
        `SolveOptions`).
        """
        fields = {f.name for f in dataclasses.fields(SolveOptions)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        options = self.options.replace(**overrides) if overrides else self.options
        return integrate(fn, y0, t0, t1, method or self.method, options, **kwargs)

    def solve_plain(self, u0, ts, t0, t1, p, **kwargs):
        """The plain forward solve of ``f`` (no sensitivities)."""
        return self.integrate(self.rhs(p), u0, t0, t1, saveat=ts, **kwargs)


class ForwardPass(NamedTuple):
    """What ``forward`` returns: the saved states, statistics, status and the backward pass's data."""

    u: tf.Tensor  # [T, *u0.shape]
    stats: dict
    status: tf.Tensor
    aux: Any


class Gradients(NamedTuple):
    """What ``backward`` returns. ``dp`` lists the differentiable leaves of ``p``
    only; ``dts`` / ``dt0`` None mean "use the closed forms"; ``status`` is
    the backward pass's own (e.g. a backward solve's), 0 when it has none."""

    du0: tf.Tensor
    dp: list
    dvars: list
    dts: tf.Tensor | None = None
    dt0: tf.Tensor | None = None
    status: tf.Tensor | int = 0


class SensitivityAlgorithm:
    """Base class of the ODE sensitivity algorithms (see the module docstring)."""

    # Does `forward` cost no more than the plain solve? Then `sensealg=None`
    # runs it directly instead of repeating the solve when a gradient is asked.
    forward_costs_a_plain_solve = False

    def forward(self, spec: Spec, u0, ts, t0, t1, p, variables) -> ForwardPass:
        raise NotImplementedError

    def backward(self, spec: Spec, u0, ts, t0, t1, p, variables, aux, g_u) -> Gradients:
        raise NotImplementedError

    def solve(self, spec: Spec, u0, ts, t0, t1, p):
        """Forward solve whose gradient this algorithm computes: ``(u, stats, status)``."""
        return differentiable(spec, self, u0, ts, t0, t1, p)


def save_time_gradients(f, ts, u_saved, g_u, p):
    """``dL/dts_i = <g_i, f(ts_i, u_i)>`` for all save times at once (one
    vectorised evaluation of ``f`` over the save points)."""

    def one(args):
        t, u, g = args
        return tf.reduce_sum(f(t, u, p) * g)

    return map_batch(one, (ts, u_saved, g_u))


def nan_if_failed(status, x):
    """``x``, or NaN of its shape when ``status`` says the solve failed."""
    bad = tf.not_equal(status, Status.SUCCESS)
    return tf.where(bad, tf.fill(tf.shape(x), tf.constant(np.nan, x.dtype)), x)


def differentiable(spec: Spec, algorithm, u0, ts, t0, t1, p):
    """Run ``algorithm.forward`` under a custom gradient given by ``algorithm.backward``.

    Returns ``(u_saved, stats, status)``.
    """
    params = Params(p)
    # Variables read inside f: custom_gradient hands their upstream list to
    # `grad` as `variables` (in its own order); we compute in this order.
    f_vars = find_variables(spec.f, t0, u0, p)

    @tf.custom_gradient
    def run(u0_, ts_, t0_, *pf):
        pp = params.pack(pf)
        # A first-order gradient never differentiates the forward pass (`grad`
        # below is its gradient), but in a graph the caller's tapes record
        # it, at a cost in tracing (ForwardSensitivity's first call on
        # Robertson or HIRES about 10% longer). Inputs cut from the tapes
        # leave nothing for them to record (reads of variables in `f` still
        # are). Not when a tape may take a second-order gradient (a
        # persistent tape, nested tapes): that differentiates `grad`, whose
        # `fwd.aux` (e.g. the forward sensitivities) depends on the inputs
        # through the forward pass. There TF also builds the gradient of each
        # forward while loop as it is traced (docs/architecture.md).
        inputs = [x for x in (u0_, ts_, t0_, t1, *pf) if tf.is_tensor(x)]
        first_order = tfcompat.only_first_order_gradients(inputs)
        cut = lambda x: tf.stop_gradient(x) if first_order and tf.is_tensor(x) else x  # noqa: E731
        fwd = algorithm.forward(spec, cut(u0_), cut(ts_), cut(t0_), cut(t1), params.pack([cut(x) for x in pf]), f_vars)

        def grad(g_u, *unused, variables=None):
            g = algorithm.backward(spec, u0_, ts_, t0_, t1, pp, f_vars, fwd.aux, g_u)
            # A failed forward solve was reported by `solve` (or the caller
            # opted out with throw=False): its gradients are NaN, and the
            # backward pass is not blamed. A failed backward pass of a good
            # forward solve raises here in eager mode.
            if spec.throw and tf.executing_eagerly() and int(fwd.status) == Status.SUCCESS:
                raise_if_failed(g.status, f"backward pass of {type(algorithm).__name__}")
            status = tf.where(tf.equal(fwd.status, Status.SUCCESS), tf.cast(g.status, tf.int32), fwd.status)
            dts = save_time_gradients(spec.f, ts_, fwd.u, g_u, pp) if g.dts is None else g.dts
            dt0 = -tf.reduce_sum(g.du0 * spec.f(t0_, u0_, pp)) if g.dt0 is None else g.dt0
            grads = [nan_if_failed(status, x) for x in [g.du0, dts, dt0] + list(g.dp)]
            if variables is None:
                return grads
            by_ref = {v.ref(): nan_if_failed(status, x) for v, x in zip(f_vars, g.dvars)}
            return grads, [by_ref.get(v.ref(), tf.zeros_like(v)) for v in variables]

        keys.extend(fwd.stats)  # known at trace time; method-specific counters included
        outs = (fwd.u, fwd.status) + tuple(fwd.stats[k] for k in keys)
        return outs, grad

    keys = []
    outs = run(u0, ts, t0, *params.float_leaves)
    return outs[0], dict(zip(keys, outs[2:])), outs[1]
