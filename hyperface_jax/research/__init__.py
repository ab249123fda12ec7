"""Research tools used by `compare` and the benchmarks: hyper-parameter search spaces and
tuning (`search_spaces`, `tuning`) and an inverted-file index for approximate search (`ivf`)."""
