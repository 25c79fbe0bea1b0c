"""Keras layers: continuous-depth (`NeuralODE`) and equilibrium (`DEQ`) blocks.

Keras 3 on the TensorFlow backend. Both layers are thin front-ends over
`sensode.solve`: the layer's weights (and those of the wrapped ``vector_field``
or ``cell``) are `tf.Variable`s read inside the right-hand side, and the
sensitivity plumbing hands them to `tf.custom_gradient`'s ``variables``, so
every ``sensealg`` trains them without any Keras-specific gradient code.

Both layers serialise (``get_config`` / ``from_config``, registered under the
package name ``"sensode"``), run under ``model.compile(jit_compile=True)``,
export with ``model.export`` and train under `tf.distribute.MirroredStrategy`.

Failures are never silent: a solve that fails (``max_steps`` reached, no
fixed point within ``max_iters``, non-finite values) raises
`sensode.SolverError` in eager mode, and inside graphs (``model.fit``,
`tf.function`, XLA) makes the layer's output and every gradient through it
NaN, with the status code in the layer's ``last_status`` weight
(``on_failure="nan"``: NaN in eager mode too). A NaN training loss therefore
means a failed solve; ``keras.callbacks.TerminateOnNaN()`` stops there.

Static shapes: the dense-output buffers of `InterpolatingAdjoint` /
`QuadratureAdjoint`, the tangent batch of `ForwardSensitivity` and the
nonlinear solves (`DEQ`) need the batch size to be known when the graph is
traced. Keep the number of samples a multiple of the batch size (or use
``drop_remainder=True``) when training with those; `NeuralODE` inference
(``training=False``: ``predict``, ``evaluate``, exported models) runs the plain
solver loop, which accepts any batch size.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Only the package's public names: the core's modules are being reorganised,
# the top-level API is what this front-end promises to follow.
from .. import (
    AndersonAcceleration,
    BacksolveAdjoint,
    DiscreteAdjoint,
    ForwardSensitivity,
    InterpolatingAdjoint,
    NewtonRaphson,
    NonlinearProblem,
    ODEProblem,
    QuadratureAdjoint,
    Tsit5,
    solve,
)

from ..ode.methods import ODEMethod
from .keras_support import (
    _encode,
    _decode,
    _check_float,
    _check_int,
    _state_variable,
    _check_on_failure,
    _expose_failure,
)

__all__ = ["NeuralODE", "DEQ"]

_ODE_SENSEALGS = (ForwardSensitivity, DiscreteAdjoint, BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint)
# These keep buffers or tangent batches sized by the state, so the batch size
# must be static when the training graph is traced.
_STATIC_BATCH_SENSEALGS = (ForwardSensitivity, InterpolatingAdjoint, QuadratureAdjoint)


# --- NeuralODE -----------------------------------------------------------------

@keras.saving.register_keras_serializable(package="sensode")
class NeuralODE(keras.layers.Layer):
    """Continuous-depth block: ``u' = vector_field(u)``, ``u(t0) = inputs``.

    The input batch ``[B, d]`` (padded with ``augment_dim`` zeros: augmented
    neural ODEs) is the initial state; all rows are integrated together, with
    one shared step size. The layer returns the state at the final time, or
    at every time of ``t``.

    Gradients: ``sensealg`` is any ODE sensitivity algorithm of `sensode.solve`
    -- `ForwardSensitivity` (only for tiny models: one tangent per weight and
    per input entry), `DiscreteAdjoint` (exact gradient of the computed
    numbers; memory grows with the steps, and under XLA with ``max_steps``),
    `BacksolveAdjoint` (O(1) memory; caution: wrong for dissipative or
    chaotic fields), `InterpolatingAdjoint` (the default: stable, stores the
    forward dense output) or `QuadratureAdjoint`. Continuous adjoints agree
    with `DiscreteAdjoint` to about the solver tolerance, not to round-off.
    Inference (``training=False``) runs the plain solver loop whatever
    ``sensealg`` is.

    Args:
      vector_field: a Keras layer or model giving ``du/dt`` with the shape of
        ``u`` (``[B, d + augment_dim]``), called as ``vector_field(u)`` or, with
        ``time_dependent=True``, as ``vector_field(t, u)`` (``t`` a scalar).
      t: times ``(t0, ..., t1)``, strictly monotone, at least two; the output
        of ``return_sequences=True`` has one entry per time.
      alg: explicit ODE method (default `sensode.Tsit5()`).
      sensealg: see above; default `InterpolatingAdjoint()`.
      rtol, atol: solver tolerances. ``last_nfe`` tells what they cost.
      max_steps: static bound on the solver steps (also the size of the
        buffers of the dense output and of XLA's discrete adjoint).
      return_sequences: return ``[B, T, d + augment_dim]`` instead of the
        final state ``[B, d + augment_dim]``.
      augment_dim: number of zero channels appended to the input (Dupont,
        Doucet & Teh 2019): lets the flow separate what a homeomorphism of
        ``R^d`` cannot.
      time_dependent: call ``vector_field(t, u)`` instead of ``vector_field(u)``.
      trainable_t1: make the end time a trainable weight ``t1`` (the save times
        stretch with it). Caution: nothing keeps it from crossing ``t0``.
      on_failure: what a failed solve (``max_steps`` reached, step size below
        the minimum, non-finite values) does. ``"raise"`` (default): raise
        `sensode.SolverError` in eager mode; inside `tf.function`,
        ``model.fit`` / ``predict`` and XLA, where nothing can raise, the
        output is NaN (so is every gradient through it, and the training
        loss) and ``last_status`` holds the code. ``"nan"``: NaN outputs in
        eager mode too. Never a silent zero or a stale state.
      **kwargs: `keras.layers.Layer` arguments (``name``, ``dtype``, ...).

    Attributes:
      last_nfe: int32 non-trainable weight: right-hand side evaluations of the
        last forward solve (``int(layer.last_nfe)``).
      last_status: int32 non-trainable weight: `sensode.Status` code of the
        last forward solve (0: success). Pair it with
        ``keras.callbacks.TerminateOnNaN()`` to stop ``model.fit`` at the
        first failed batch.

    References: Chen, Rubanova, Bettencourt & Duvenaud, "Neural ordinary
    differential equations", NeurIPS 2018; Dupont, Doucet & Teh, "Augmented
    neural ODEs", NeurIPS 2019.
    """

    def __init__(
        self,
        vector_field,
        *,
        t=(0.0, 1.0),
        alg=None,
        sensealg=None,
        rtol=1e-3,
        atol=1e-6,
        max_steps=1000,
        return_sequences=False,
        augment_dim=0,
        time_dependent=False,
        trainable_t1=False,
        on_failure="raise",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vector_field, keras.layers.Layer):
            raise TypeError(f"`vector_field` must be a Keras layer or model, got {type(vector_field).__name__}")
        times = np.asarray(t, dtype=np.float64)
        if times.ndim != 1 or times.size < 2 or not np.all(np.isfinite(times)):
            raise ValueError(f"`t` must be a 1-D sequence of at least two finite times, got {t!r}")
        steps = np.diff(times)
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError(f"`t` must be strictly monotone (increasing or decreasing), got {times.tolist()}")
        alg = Tsit5() if alg is None else alg
        if not isinstance(alg, ODEMethod):
            raise TypeError(f"`alg` must be an ODE method such as sensode.Tsit5(), got {alg!r}")
        if not alg.adaptive:
            raise TypeError(f"NeuralODE needs an adaptive method (Tsit5, DP5, BS3, DP8), got {alg!r}")
        sensealg = InterpolatingAdjoint() if sensealg is None else sensealg
        if not isinstance(sensealg, _ODE_SENSEALGS):
            raise TypeError(
                "`sensealg` of a NeuralODE must be one of ForwardSensitivity, DiscreteAdjoint, BacksolveAdjoint, "
                f"InterpolatingAdjoint, QuadratureAdjoint; got {sensealg!r}"
            )
        if isinstance(sensealg, DiscreteAdjoint) and sensealg.linsolve is not None:
            raise TypeError("`DiscreteAdjoint(linsolve=...)` applies to f(u, p) = 0 (the DEQ layer), not to an ODE")
        self.vector_field = vector_field
        self.t = [float(x) for x in times]
        self.alg = alg
        self.sensealg = sensealg
        self.rtol = _check_float(rtol, "rtol")
        self.atol = _check_float(atol, "atol")
        self.max_steps = _check_int(max_steps, "max_steps", 1)
        self.return_sequences = bool(return_sequences)
        self.augment_dim = _check_int(augment_dim, "augment_dim", 0)
        self.time_dependent = bool(time_dependent)
        self.trainable_t1 = bool(trainable_t1)
        self.on_failure = _check_on_failure(on_failure)

    def _field(self, t, u):
        out = self.vector_field(t, u) if self.time_dependent else self.vector_field(u)
        out = tf.convert_to_tensor(out)
        if out.shape.rank != u.shape.rank or not out.shape.is_compatible_with(u.shape):
            raise ValueError(
                f"NeuralODE: `vector_field` ({self.vector_field.name}) maps a state of shape {u.shape} to shape "
                f"{out.shape}; du/dt must have the shape of u ([batch, d + augment_dim] = "
                f"[batch, {u.shape[-1]}])"
            )
        return tf.cast(out, u.dtype)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"NeuralODE expects inputs of shape [batch, d] with known d, got {input_shape}")
        width = int(input_shape[-1]) + self.augment_dim
        # One call on a dummy state builds the field and checks its output shape now.
        self._field(tf.zeros([], self.compute_dtype), tf.zeros([1, width], self.compute_dtype))
        self.t1 = None
        if self.trainable_t1:
            self.t1 = self.add_weight(
                name="t1", shape=(), initializer=keras.initializers.Constant(self.t[-1]), trainable=True
            )
        self.last_nfe = _state_variable(self, "last_nfe")
        self.last_status = _state_variable(self, "last_status")

    def compute_output_shape(self, input_shape):
        width = input_shape[-1] + self.augment_dim
        if self.return_sequences:
            return (input_shape[0], len(self.t), width)
        return (input_shape[0], width)

    def call(self, inputs, training=None):
        dtype = self.compute_dtype
        u0 = tf.cast(inputs, dtype)
        if self.augment_dim:
            u0 = tf.pad(u0, [[0, 0], [0, self.augment_dim]])
        t0 = tf.constant(self.t[0], dtype)
        t_end = tf.constant(self.t[-1], dtype)
        times = tf.constant(self.t, dtype)
        if self.t1 is not None:
            t_end = tf.cast(self.t1, dtype)
            # The save times stretch with the trainable end time.
            times = t0 + (times - t0) * ((t_end - t0) / (self.t[-1] - self.t[0]))
        saveat = times if self.return_sequences else None
        sensealg = self.sensealg
        dynamic = isinstance(sensealg, _STATIC_BATCH_SENSEALGS) and u0.shape[0] is None
        if training is False or (dynamic and training is None):
            # Inference (predict, evaluate, export): the plain loop accepts any
            # batch size and does no sensitivity work; gradients taken anyway
            # are those of `DiscreteAdjoint`.
            sensealg = DiscreteAdjoint()
        elif dynamic:
            raise ValueError(
                f"NeuralODE with {type(sensealg).__name__} needs a static batch size while training (its buffers "
                "are sized by the state); make the number of samples a multiple of the batch size, batch with "
                "drop_remainder=True, or use DiscreteAdjoint / BacksolveAdjoint"
            )
        prob = ODEProblem(lambda t, u, p: self._field(t, u), u0, (t0, t_end))
        sol = solve(
            prob, self.alg, saveat=saveat, rtol=self.rtol, atol=self.atol, max_steps=self.max_steps,
            sensealg=sensealg, throw=False,
        )
        self.last_nfe.assign(sol.stats["nfe"])
        out = tf.transpose(sol.u, [1, 0, 2]) if self.return_sequences else sol.u[-1]  # [T, B, D] -> [B, T, D]
        # The guard does not rely on the core to mark unreached save points:
        # any non-zero status makes the whole output (and its gradients) NaN.
        return _expose_failure(
            self, inputs, out, sol.status, "the forward ODE solve",
            f"raise `max_steps` (now {self.max_steps}), loosen `rtol`/`atol`, or check that the vector field "
            "does not blow up",
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            t=list(self.t),
            alg=_encode(self.alg),
            sensealg=_encode(self.sensealg),
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            return_sequences=self.return_sequences,
            augment_dim=self.augment_dim,
            time_dependent=self.time_dependent,
            trainable_t1=self.trainable_t1,
            on_failure=self.on_failure,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["vector_field"] = keras.saving.deserialize_keras_object(config["vector_field"])
        config["alg"] = _decode(config["alg"])
        config["sensealg"] = _decode(config["sensealg"])
        return cls(**config)


# --- DEQ -------------------------------------------------------------------------

_NONLINEAR_ALGS = (NewtonRaphson, AndersonAcceleration)  # NewtonKrylov is a NewtonRaphson


@keras.saving.register_keras_serializable(package="sensode")
class DEQ(keras.layers.Layer):
    """Deep-equilibrium block: the fixed point ``z* = cell(z*, x)``.

    The fixed point is found from ``z = 0`` by a nonlinear solver on the
    residual ``cell(z, x) - z`` (rows of the batch are independent systems),
    and differentiated by the implicit adjoint: one transposed linear solve
    with ``I - d cell/dz`` at ``z*``, whatever the number of iterations, so
    memory does not grow with them. Gradients reach ``x`` and the weights of
    ``cell`` (and of the layers before it).

    When to use: weight-tied "infinitely deep" blocks whose cell is a
    contraction in ``z``. Caution: training tends to grow the ``z`` weights
    until the iteration no longer converges within ``max_iters``; bound them
    (e.g. rescale ``W`` to a norm below 1, as ``examples/deq_classifier.py``
    does: with a 1-Lipschitz activation the cell is then a contraction, and
    the fixed point exists and is unique). A solve that does not converge is
    a failure (see ``on_failure``), never the last iterate passed on as if it
    were ``z*``. The cell must act row-wise (no batch statistics).

    Args:
      cell: Keras layer called as ``cell(z, x)`` with ``z`` ``[B, state_size]``
        and ``x`` the layer input ``[B, m]``; returns ``[B, state_size]``.
      state_size: size of ``z``.
      alg: `sensode.AndersonAcceleration()` (default: derivative-free, for
        contractive cells), `sensode.NewtonRaphson()` (dense Jacobians,
        ``state_size`` up to a few hundred) or `sensode.NewtonKrylov()`.
      sensealg: `sensode.DiscreteAdjoint(linsolve=...)` (default: the implicit
        adjoint with a dense LU; pass ``linsolve=sensode.linsolve.GMRES()`` for
        large ``state_size``) or `sensode.ForwardSensitivity()`.
      abstol, reltol: a row has converged when
        ``max|cell(z, x) - z| <= abstol + reltol * max|z|``; None: ``eps^(2/3)``
        of the dtype (2.4e-5 in float32).
      max_iters: static bound on the solver iterations.
      on_failure: ``"raise"`` (default): a solve that does not converge
        (``MAX_ITERS``), meets a singular Jacobian or non-finite values raises
        `sensode.SolverError` in eager mode; inside `tf.function`,
        ``model.fit`` / ``predict`` and XLA the output is NaN (so is every
        gradient through it, and the loss) and ``last_status`` holds the
        code. ``"nan"``: NaN outputs in eager mode too.
      **kwargs: `keras.layers.Layer` arguments.

    Attributes:
      last_iterations: int32 non-trainable weight: iterations of the last solve.
      last_status: int32 non-trainable weight: `sensode.Status` code of the
        last solve (0: success; the largest code over the chunks of a batch of
        unknown size).

    References: Bai, Kolter & Koltun, "Deep equilibrium models", NeurIPS 2019;
    Walker & Ni, SIAM J. Numer. Anal. 49(4), 2011 (Anderson acceleration).
    """

    #: Rows per solve when the batch size is unknown while tracing.
    CHUNK = 16

    def __init__(
        self, cell, *, state_size, alg=None, sensealg=None, abstol=None, reltol=None, max_iters=50,
        on_failure="raise", **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(cell, keras.layers.Layer):
            raise TypeError(f"`cell` must be a Keras layer called as cell(z, x), got {type(cell).__name__}")
        alg = AndersonAcceleration() if alg is None else alg
        if not isinstance(alg, _NONLINEAR_ALGS):
            raise TypeError(
                f"`alg` of a DEQ must be AndersonAcceleration, NewtonRaphson or NewtonKrylov, got {alg!r}"
            )
        sensealg = DiscreteAdjoint() if sensealg is None else sensealg
        if not isinstance(sensealg, (DiscreteAdjoint, ForwardSensitivity)):
            raise TypeError(
                "`sensealg` of a DEQ must be DiscreteAdjoint (the implicit adjoint) or ForwardSensitivity; "
                f"{sensealg!r} is an ODE method"
            )
        if isinstance(sensealg, DiscreteAdjoint) and sensealg.checkpoints is not None:
            raise TypeError("`DiscreteAdjoint(checkpoints=...)` applies to ODE solves; the implicit adjoint stores only z*")
        self.cell = cell
        self.state_size = _check_int(state_size, "state_size", 1)
        self.alg = alg
        self.sensealg = sensealg
        self.abstol = None if abstol is None else _check_float(abstol, "abstol")
        self.reltol = None if reltol is None else _check_float(reltol, "reltol")
        self.max_iters = _check_int(max_iters, "max_iters", 1)
        self.on_failure = _check_on_failure(on_failure)

    def _residual(self, z, x):
        out = tf.convert_to_tensor(self.cell(z, x))
        if out.shape.rank != 2 or not out.shape.is_compatible_with(z.shape):
            raise ValueError(
                f"DEQ: `cell` ({self.cell.name}) maps z of shape {z.shape} to shape {out.shape}; "
                f"cell(z, x) must return [batch, state_size] = [batch, {self.state_size}]"
            )
        return tf.cast(out, z.dtype) - z

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"DEQ expects inputs of shape [batch, m] with known m, got {input_shape}")
        dtype = self.compute_dtype
        self._residual(tf.zeros([1, self.state_size], dtype), tf.zeros([1, int(input_shape[-1])], dtype))
        self.last_iterations = _state_variable(self, "last_iterations")
        self.last_status = _state_variable(self, "last_status")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.state_size)

    def _solve(self, x):
        """The fixed points of a ``[B, m]`` batch with static ``B``; ``(z*, iterations, status)``."""
        z0 = tf.zeros([x.shape[0], self.state_size], x.dtype)
        prob = NonlinearProblem(self._residual, z0, x)
        sol = solve(
            prob, self.alg, abstol=self.abstol, reltol=self.reltol, max_iters=self.max_iters,
            sensealg=self.sensealg, throw=False,
        )
        return sol.u, sol.iterations, sol.status

    def call(self, inputs, training=None):
        x = tf.cast(inputs, self.compute_dtype)
        if x.shape[0] is not None:
            z, iterations, status = self._solve(x)
        elif training:
            raise ValueError(
                "DEQ needs a static batch size while training: sensode's nonlinear solve requires a fully defined "
                "shape of u0, and its implicit gradient does not pass through the chunked solve used for batches "
                "of unknown size. Make the number of samples a multiple of the batch size or batch with "
                "drop_remainder=True"
            )
        else:
            z, iterations, status = self._solve_in_chunks(x)
        self.last_iterations.assign(iterations)
        return _expose_failure(
            self, x, z, status, f"the fixed-point solve ({type(self.alg).__name__})",
            f"no fixed point within max_iters={self.max_iters} or a singular Jacobian: keep the cell contractive "
            "in z (bound the norm of its z weights), raise `max_iters`, or try NewtonRaphson",
        )

    def _solve_in_chunks(self, x):
        # sensode's nonlinear solve needs a static batch (it reshapes u0 to
        # [B, n] with a static B). Rows are independent systems, so a batch of
        # unknown size (the last partial batch of `predict`, a SavedModel's
        # serving signature) is zero-padded to whole chunks of CHUNK rows, and
        # the chunks are solved one after another. Inference only: TensorFlow
        # cannot take the custom gradient's variables through `tf.map_fn`.
        chunk = self.CHUNK
        batch = tf.shape(x)[0]
        n_chunks = (batch + chunk - 1) // chunk
        padded = tf.pad(x, [[0, n_chunks * chunk - batch], [0, 0]])
        blocks = tf.reshape(padded, [n_chunks, chunk, x.shape[-1]])
        z, iterations, status = tf.map_fn(
            self._solve, blocks,
            fn_output_signature=(
                tf.TensorSpec([chunk, self.state_size], x.dtype), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32),
            ),
        )
        return tf.reshape(z, [-1, self.state_size])[:batch], tf.reduce_max(iterations), tf.reduce_max(status)

    def get_config(self):
        config = super().get_config()
        config.update(
            cell=keras.saving.serialize_keras_object(self.cell),
            state_size=self.state_size,
            alg=_encode(self.alg),
            sensealg=_encode(self.sensealg),
            abstol=self.abstol,
            reltol=self.reltol,
            max_iters=self.max_iters,
            on_failure=self.on_failure,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cell"] = keras.saving.deserialize_keras_object(config["cell"])
        config["alg"] = _decode(config["alg"])
        config["sensealg"] = _decode(config["sensealg"])
        return cls(**config)
