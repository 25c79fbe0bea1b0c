"""The private TensorFlow APIs sensode depends on, each wrapped once, with why.

TensorFlow has no public API for any of the needs below. Each helper
degrades safely if a TensorFlow release moves the private symbol: it then
gives the answer that is always correct, only slower.
"""

from __future__ import annotations

import contextlib

__all__ = ["call_flat", "gradient_may_be_recorded", "in_xla_context", "only_first_order_gradients",
           "register_missing_gradients", "runtime_started", "stop_recording"]


def gradient_may_be_recorded() -> bool:
    """Whether a `tf.GradientTape` (or forward accumulator) might record ops now.

    Used by ``sensealg=None`` in eager mode to skip all sensitivity work when
    nothing can differentiate the solve. No public API reports active tapes.
    Fallback: True (the solve then keeps its gradient machinery).
    """
    try:
        from tensorflow.python.eager import record
    except ImportError:  # pragma: no cover - depends on the TF release
        return True
    fn = getattr(record, "could_possibly_record", None)
    return True if fn is None else bool(fn())


def only_first_order_gradients(tensors) -> bool:
    """Whether no tape can take a second-order gradient through ops on ``tensors`` (a list of tensors) now.

    Used to run a custom gradient's forward pass on inputs cut from the tapes
    (`sensitivity.base.differentiable`): a tape that records it builds the
    gradient of its while loops while tracing, which only a second-order
    gradient (a persistent tape, nested tapes, a forward accumulator) can
    need. No public API says which tapes watch a tensor. Fallback: False
    (the forward pass stays recorded: slower to trace, never wrong).
    """
    try:
        from tensorflow.python.ops import gradients_util
    except ImportError:  # pragma: no cover
        return False
    fn = getattr(gradients_util, "PossibleTapeGradientTypes", None)
    higher = getattr(gradients_util, "POSSIBLE_GRADIENT_TYPES_HIGHER_ORDER", None)
    if fn is None or higher is None:  # pragma: no cover
        return False
    return fn(list(tensors)) != higher


def in_xla_context(graph) -> bool:
    """Whether ops built in ``graph`` now will be compiled by XLA (``jit_compile=True``).

    Used to choose between kernels that XLA compiles and ones it rejects (the
    LU decomposition with partial pivoting has no XLA kernel on every
    device). No public API exposes the compilation context. Fallback: True
    (the XLA-compatible path, which also runs outside XLA).
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return True
    fn = getattr(control_flow_util, "GraphOrParentsInXlaContext", None)
    return True if fn is None else bool(fn(graph))


def stop_recording():
    """A context in which no `tf.GradientTape` records operations.

    Used to run a traced nonlinear solve eagerly without the caller's tapes
    building a gradient of the whole loop (the implicit adjoint replaces it).
    `tf.GradientTape.stop_recording` pauses one tape the caller holds; there
    is no public way to pause every active tape. Fallback: no pause (correct,
    and then the caller's tape records the loop, which costs memory).
    """
    try:
        from tensorflow.python.eager import record
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    fn = getattr(record, "stop_recording", None)
    return contextlib.nullcontext() if fn is None else fn()


def call_flat(concrete, tensors):
    """Call a traced `ConcreteFunction` whose arguments are the flat list ``tensors``.

    Used by the eager entry points (`sensode.compiled`) to run a cached XLA
    program without `tf.function`'s per-call argument binding and
    canonicalisation (~0.2 ms a call, most of a Lotka--Volterra solve). Tapes
    still record the call (the private method is what the public call runs
    after binding). Fallback: the public call with positional arguments.
    """
    fn = getattr(concrete, "_call_flat", None)
    if fn is None:  # pragma: no cover - depends on the TF release
        return concrete(*tensors)
    return fn(list(tensors), concrete.captured_inputs)


def runtime_started() -> bool:
    """Whether TensorFlow's runtime (the eager context and its devices) exists yet.

    Used by `sensode.enable_compilation_cache`: ``TF_XLA_FLAGS`` is read once,
    when the runtime starts, so a flag set later has no effect. No public API
    says whether that has happened. Fallback: True (the caller then reports
    that it is too late instead of claiming a cache that is not in use).
    """
    try:
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover
        return True
    ctx = getattr(context, "_context", None)
    if ctx is None:
        return False
    return getattr(ctx, "_context_handle", True) is not None


def register_missing_gradients() -> None:
    """Give ``XlaDynamicUpdateSlice`` the gradient TensorFlow lacks (once; skipped if TF has one).

    Under XLA the gradient of ``Slice`` (the gradient of ``tf.concat``) is an
    ``XlaDynamicUpdateSlice``, which has no gradient: a third derivative of
    an ``f`` that concatenates fails with "No gradient defined for operation
    ... XlaDynamicUpdateSlice". A stiff method's discrete adjoint under XLA
    needs exactly that: reverse mode through the Jacobian's forward-mode
    JVPs (which TF builds from two reverse passes). The gradient: the update's
    region of the incoming gradient goes to ``update``, the rest to
    ``operand``. ``gen_xla_ops`` is private. Fallback: nothing registered
    (that gradient then fails as before, loudly).
    """
    import tensorflow as tf

    try:
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops
        from tensorflow.python.framework import ops
    except ImportError:  # pragma: no cover
        return
    try:
        ops.gradient_registry.lookup("XlaDynamicUpdateSlice")
        return  # TensorFlow has one (or sensode registered it already)
    except LookupError:
        pass

    @tf.RegisterGradient("XlaDynamicUpdateSlice")
    def _dynamic_update_slice_grad(op, grad):
        _, update, indices = op.inputs
        d_operand = gen_xla_ops.xla_dynamic_update_slice(grad, tf.zeros_like(update), indices)
        d_update = tf.slice(grad, indices, tf.shape(update, out_type=indices.dtype))
        return d_operand, d_update, None


def fix_pfor_roll() -> None:
    """Replace the vectorisation (pfor) rule of ``tf.roll``, which is wrong for a negative axis (once).

    ``tf.vectorized_map`` and ``GradientTape.jacobian`` add a leading batch
    axis and shift ``Roll``'s axis by one, without first making a negative
    axis positive: ``tf.roll(u, 1, axis=-1)`` inside them rolls along
    axis 0, the batch (TensorFlow 2.21). sensode vectorises products of
    ``f`` with pfor (forward sensitivities, Jacobians in graphs), so an
    ``f`` with a periodic shift (a semi-discretised PDE) got wrong
    sensitivities without an error. The rule registered here normalises
    the axis against the unbatched rank and otherwise does what
    TensorFlow's does. ``pfor``'s registry is private. Fallback: nothing
    replaced.
    """
    try:
        from tensorflow.python.ops.parallel_for import pfor
    except ImportError:  # pragma: no cover
        return
    registry = getattr(pfor, "_pfor_converter_registry", None)
    if registry is None or getattr(registry.get("Roll"), "sensode_fixed", False):
        return
    import tensorflow as tf

    def convert_roll(pfor_input):
        t = pfor_input.stacked_input(0)
        shift, shift_stacked, _ = pfor_input.input(1)
        axis = pfor_input.unstacked_input(2)
        rank = tf.rank(t) - 1  # of one iteration's value
        axis = tf.where(axis < 0, axis + tf.cast(rank, axis.dtype), axis)
        if not shift_stacked:
            return pfor.wrap(tf.roll(t, shift, axis + 1), True)
        # Shifts differ per iteration: gather every element from its source.
        n_axes = tf.cast(rank, tf.int64)
        axis = tf.cast(tf.reshape(axis, [-1]), tf.int64)
        loop_len = tf.cast(pfor_input.pfor.loop_len_vector[0], tf.int64)
        shift = tf.cast(tf.reshape(shift, [loop_len, -1]), tf.int64)
        segments = tf.range(loop_len, dtype=tf.int64)[:, None] * n_axes + axis[None, :]
        offsets = tf.reshape(tf.math.unsorted_segment_sum(shift, segments, loop_len * n_axes), [loop_len, n_axes])
        shape = tf.shape(t, out_type=tf.int64)[1:]
        strides = tf.math.cumprod(shape, exclusive=True, reverse=True)
        flat = tf.range(tf.reduce_prod(shape), dtype=tf.int64)
        coords = (flat[None, :, None] // strides[None, None, :] - offsets[:, None, :]) % shape[None, None, :]
        return pfor.wrap(tf.reshape(tf.gather_nd(t, coords, batch_dims=1), tf.shape(t)), True)

    convert_roll.sensode_fixed = True
    registry["Roll"] = convert_roll


def add_pfor_lu() -> None:
    """Register a vectorisation (pfor) rule for ``Lu`` (``tf.linalg.lu``), which TensorFlow lacks (once).

    Without it, ``tf.vectorized_map`` of anything that factorises a matrix
    fails while tracing (``No pfor vectorization defined for Lu``): an
    ensemble of stiff solves (`sensode.gsa.solve_ensemble` with ``Rodas5``,
    whose per-sample loops pfor vectorises) could not run at all. ``Lu``
    factorises every matrix of a ``[..., M, M]`` batch, so the rule passes
    the stacked input through: row ``i`` of the result is the factorisation
    of iteration ``i``'s matrix. Fallback: nothing registered.
    """
    try:
        from tensorflow.python.ops import gen_linalg_ops
        from tensorflow.python.ops.parallel_for import pfor
    except ImportError:  # pragma: no cover
        return
    registry = getattr(pfor, "_pfor_converter_registry", None)
    if registry is None or "Lu" in registry:
        return

    def convert_lu(pfor_input):
        lu, perm = gen_linalg_ops.lu(pfor_input.stacked_input(0),
                                     output_idx_type=pfor_input.get_attr("output_idx_type"))
        return [pfor.wrap(lu, True), pfor.wrap(perm, True)]

    registry["Lu"] = convert_lu
