"""Frozen dataclasses that are JAX pytrees (the solver's state and its neighbour lists)."""

import dataclasses

import jax


def dataclass(cls):
    """`cls` as a frozen dataclass whose every field is a pytree child, with
    `replace(**changes)`: what `flax.struct.dataclass` gave, without importing flax (a
    third of a second of every command's start-up). Key paths are the field names, as
    before, so checkpoints written by either read back the same."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.replace = lambda self, **changes: dataclasses.replace(self, **changes)
    fields = [field.name for field in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])
