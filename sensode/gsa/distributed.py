"""Ensembles split across devices and workers with `tf.distribute`.

The batch is cut into one shard per replica; each replica runs
`solve_ensemble` on its shard and `Strategy.gather` stacks the results in
sample order. No scheduler of our own: `MirroredStrategy` covers the devices
of one machine (GPUs, or logical CPUs), `MultiWorkerMirroredStrategy` several
processes or machines (each worker must call this function with the same
inputs; ``TF_CONFIG`` names the cluster, see ``docs/gsa.md``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..compiled import value_key
from .ensemble import STAT_KEYS, EnsembleSolution, batch_inputs, solve_ensemble

__all__ = ["solve_ensemble_distributed"]

_CACHE: dict = {}


def solve_ensemble_distributed(strategy, prob, u0=None, p=None, **options) -> EnsembleSolution:
    """`solve_ensemble` with the samples split across ``strategy``'s replicas.

    Args:
      strategy: a `tf.distribute.Strategy` (``MirroredStrategy``,
        ``MultiWorkerMirroredStrategy``, ...).
      prob, u0, p: as in `solve_ensemble` (the batch is padded to a multiple
        of the number of replicas with copies of the last sample, then
        trimmed).
      **options: the keyword options of `solve_ensemble` except ``throw``:
        failed samples have NaN rows and a non-zero status. With
        ``compile=True`` (default) each replica runs its shard as one
        XLA-compiled program.

    Returns:
      `EnsembleSolution` (eager tensors, on the host).

    Not differentiable: gradients of distributed ensembles go through
    ``strategy.run`` of a training step of your own (see ``docs/gsa.md``).
    """
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"`strategy` must be a tf.distribute.Strategy, got {type(strategy).__name__}")
    if "throw" in options:
        raise TypeError("`throw` is not an option here: read the per-sample status")
    u0b, pb = batch_inputs(prob, u0, p)
    leaves = [u0b.numpy()] + [x.numpy() for x in tf.nest.flatten(pb)]
    batch = leaves[0].shape[0]
    replicas = strategy.num_replicas_in_sync
    shard = -(-batch // replicas)
    pad = shard * replicas - batch
    if pad:
        leaves = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in leaves]

    def shard_for(ctx):
        i = ctx.replica_id_in_sync_group
        return [tf.constant(x[i * shard : (i + 1) * shard]) for x in leaves]

    values = strategy.experimental_distribute_values_from_function(shard_for)

    # Each replica's shard as one XLA program, as an eager `solve_ensemble` runs (``compile``, default True), cached
    # so that a second call with the same problem and options runs it without tracing again.
    jit = bool(options.pop("compile", True)) and options.get("vectorize", "auto") != "pfor"
    key = (id(strategy), prob.f, value_key(prob.tspan), jit, tf.nest.map_structure(lambda x: None, pb),
           tuple(sorted((k, value_key(v)) for k, v in options.items())))
    entry = _CACHE.get(key)
    if entry is None or entry[0] is not strategy:
        if len(_CACHE) >= 16:
            _CACHE.clear()

        @tf.function(autograph=False, jit_compile=jit)
        def replica_fn(values):
            u0s, ps = values[0], tf.nest.pack_sequence_as(pb, values[1:])
            sol = solve_ensemble(prob, u0s, ps, throw=False, **options)
            return (sol.u, sol.status) + tuple(sol.stats[k] for k in STAT_KEYS), sol.t

        @tf.function(autograph=False)
        def run(values):
            return strategy.run(replica_fn, args=(values,))

        entry = _CACHE[key] = (strategy, run)
    run = entry[1]
    outs, t = run(values)
    t = strategy.experimental_local_results(t)[0]
    local = [strategy.experimental_local_results(x) for x in outs]
    if sum(int(part.shape[0]) for part in local[0]) == shard * replicas:
        # Every replica is local (one machine): stack the shards in replica order.
        outs = [tf.concat([tf.identity(part) for part in parts], axis=0) for parts in local]
    else:  # several workers: all-gather across them
        outs = [strategy.gather(x, axis=0) for x in outs]
    outs = [x[:batch] for x in outs]
    return EnsembleSolution(t=t, u=outs[0], status=outs[1], stats=dict(zip(STAT_KEYS, outs[2:])))
