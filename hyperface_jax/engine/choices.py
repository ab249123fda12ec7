"""The names of the engine's named options, in plain Python (importing this module loads
no JAX): the engine checks its arguments against them and the config dataclasses
(`jobs/config.py`) make them their flags' choices, so a CLI's help lists them without JAX."""

OBJECTIVES = ("max", "logsumexp", "riesz")  # objective.hyperface_loss's inner maximum
PACKING_REDUCTIONS = ("mean", "max")  # search.reduce_rows: the outer reduction
SCHEDULES = ("constant", "staircase", "exponential", "cosine", "geometric")  # optimizers
MINIBATCH_UPDATES = ("sparse", "dense")  # solver: which rows a mini-batch step moves
# When neighbour lists are rebuilt: when the displacement bound says a list may have gone
# stale (`neighbor_lists.may_be_stale`), or every `neighbor_refresh_every` steps.
NEIGHBOR_REBUILDS = ("displacement", "every")
# Matmul precisions: the three XLA precisions for float32 inputs, and "bfloat16", which
# casts the inputs of the search to bfloat16 (float32 accumulation) and then recomputes
# the selected pairs' cosines exactly in float32, so values (and gradients) stay exact
# and only the choice of arg-max can differ, between near-ties.
MATMUL_PRECISIONS = ("highest", "high", "default", "bfloat16")
