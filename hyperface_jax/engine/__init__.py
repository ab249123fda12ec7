"""The engine: pure JAX, no flags, no files.

The sphere, the blockwise search kernels (`neighbors`, and their ring versions in
`sharding`), neighbour lists, the objective, the solver's step and loop, the placements
(one device, a mesh of devices) and the optimizers. Errors are `ValueError`/`TypeError`
naming the argument; the CLI layer turns them into its one-line messages.
"""
