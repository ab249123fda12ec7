"""What a compiled program holds: the size of its largest array (tests and benchmarks of
per-device memory read it beside `compiled.memory_analysis()`)."""

import re

_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "pred": 1, "s8": 1,
                "u8": 1, "f64": 8, "s64": 8, "u64": 8}


def largest_array_bytes(compiled) -> int:
    """Bytes of the largest array in a compiled program; for a sharded program that is the
    SPMD-partitioned module, i.e. per device (together with `compiled.memory_analysis()`)."""
    best = 0
    kinds = "|".join(_DTYPE_BYTES)
    for kind, dims in re.findall(rf"\b({kinds})\[([\d,]*)\]", compiled.as_text()):
        size = _DTYPE_BYTES[kind]
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        best = max(best, size)
    return best
