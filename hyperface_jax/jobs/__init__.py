"""Jobs: the work behind each CLI, callable from Python (`api.pack_references`).

`config` (the packing run's options, one dataclass), `problem` (inputs read and checked),
`packing` (plan, loop, report, outputs) and `api` (the notebook entry point)."""
