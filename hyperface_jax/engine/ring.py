"""The ring: how blocks of partner rows visit the rows a device holds.

Every search kernel (`kernels`) is written once against a `Ring`. A device holds one block
of rows; at turn k it sees the block of device `owner(k)`, then passes it on to the next
device with `lax.ppermute` (`shift`). After `size` turns every block has visited every
device, and a block that collected gradients on its way is home again. The local search
is a ring of one block (`LOCAL_RING`): one turn, no collective, the same kernel.

Rows are named by global index: row r of device i's block is row i * rows + r of the whole
array, so self pairs, padding rows and the owners of list partners are found by index.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax

AXIS = "rows"  # the name of the mesh axis rows are split over


@dataclasses.dataclass(frozen=True)
class Ring:
    """`size` blocks round the mesh axis `axis` (inside `shard_map` when size > 1)."""

    size: int = 1
    axis: str = AXIS

    def me(self):
        """The index of this device's block (0 on one device)."""
        return 0 if self.size == 1 else lax.axis_index(self.axis)

    def owner(self, turn):
        """Whose block this device sees at `turn` (its own at turn 0)."""
        return 0 if self.size == 1 else (self.me() - turn) % self.size

    def shift(self, a):
        """Device i sends `a` to device i + 1 (mod size); nothing moves on one device."""
        if self.size == 1:
            return a
        return lax.ppermute(a, self.axis, [(i, (i + 1) % self.size) for i in range(self.size)])

    def fold(self, visit, carry, start: int = 0):
        """`carry = visit(turn, carry)` for turns start, ..., size - 1 (called directly on
        one device, a `fori_loop` on a mesh)."""
        if self.size == 1:
            return visit(0, carry) if start == 0 else carry
        return lax.fori_loop(start, self.size, visit, carry)

    def real(self, owner, rows: int, count):
        """Which rows of `owner`'s block (of `rows` rows) are real, global index < count;
        None when every row is (`count` None)."""
        if count is None:
            return None
        return owner * rows + jnp.arange(rows) < count

    def locate(self, idx, owner, rows: int):
        """Global row indices `idx` as positions in `owner`'s block: (inside, local), with
        `inside` None when every index is in the block (one device) and local 0 outside."""
        if self.size == 1:
            return None, idx
        local = idx - owner * rows
        inside = (local >= 0) & (local < rows)
        return inside, jnp.where(inside, local, 0)

    def total(self, v):
        """Sum of `v` over every device's rows."""
        s = jnp.sum(v)
        return s if self.size == 1 else lax.psum(s, self.axis)

    def maximum(self, v):
        """Maximum of `v` over every device's rows."""
        m = jnp.max(v)
        return m if self.size == 1 else lax.pmax(m, self.axis)


LOCAL_RING = Ring()
