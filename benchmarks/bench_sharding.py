"""Sharded packing: steps per second and per-device memory against the number of devices.

Runs in one process with forced host devices (set before jax is imported), so on a CPU it
measures the program the sharded solver compiles, not a speed-up: the devices share the
machine's cores (this benchmark's figures in docs/sharding.md were taken on 2 cores, where
no speed-up is possible). The memory figures are per device, from the compiled SPMD
program: XLA's memory analysis (arguments and temporaries) and the largest array in the
partitioned program. On GPUs or TPUs run it without --host_devices.

    python benchmarks/bench_sharding.py [--n=4096 --d=128 --m=4096 --batch=1024 --steps=20]
"""

import argparse
import os
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--m", type=int, default=4096, help="gallery rows (0: no gallery)")
    p.add_argument("--batch", type=int, default=1024, help="mini-batch size B")
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--host_devices", type=int, default=4,
                   help="forced CPU devices (0: use the real devices)")
    p.add_argument("--tile_size", type=int, default=1024)
    args = p.parse_args()
    if args.host_devices and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from hyperface_jax.engine import optimizers, solver, sphere
    from hyperface_jax.engine.placement import LOCAL, Sharded
    from hyperface_jax.engine.ring import AXIS
    from hyperface_jax.measure.compiled import largest_array_bytes

    key = jax.random.PRNGKey(0)
    # On the host: each setting's state is a fresh copy (the runner donates its state, so
    # a device array shared between settings would be deleted by the first).
    x0 = np.asarray(sphere.random_unit_vectors(key, args.n, args.d))
    gallery = (np.asarray(sphere.random_unit_vectors(jax.random.fold_in(key, 1), args.m, args.d))
               if args.m else None)
    opt = optimizers.on_sphere(
        optimizers.make_optimizer("adam", optimizers.make_schedule("constant", 0.01, steps=1)))
    alpha = 0.5 if args.m else 0.0
    print(f"backend={jax.default_backend()} devices available={jax.device_count()} "
          f"cores={os.cpu_count()} n={args.n} d={args.d} m={args.m} B={args.batch} "
          f"tile={args.tile_size} jax={jax.__version__}")
    print("| mode | devices | path | steps/s | largest array / device (MiB) | "
          "temp / device (MiB) | arguments / device (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for mode, batch in (("full batch", 0), (f"mini-batch B={args.batch}", args.batch)):
        config = solver.SolverConfig(alpha=alpha, batch_size=batch, tile_size=args.tile_size)
        settings = [("Local", None)] + [("Sharded ring", count) for count in args.devices]
        for path, count in settings:
            if count is None:
                placement, count = LOCAL, 1
            else:
                placement = Sharded(
                    jax.sharding.Mesh(np.asarray(jax.devices()[:count]), (AXIS,)))
            state = placement.put(solver.init_state(x0, opt, 0), args.n)
            g = placement.put_gallery(gallery)
            run = solver.make_runner(opt, config, args.n, placement=placement,
                                     gallery_count=args.m or None, template=state,
                                     donate=True)
            compiled = run.lower(state, g, jnp.int32(0)).compile()
            memory = compiled.memory_analysis()
            largest = largest_array_bytes(compiled)
            state, _ = compiled(state, g, jnp.int32(2))  # warm up
            jax.block_until_ready(state)
            t = time.perf_counter()
            state, _ = compiled(state, g, jnp.int32(args.steps))
            jax.block_until_ready(state)
            rate = args.steps / (time.perf_counter() - t)
            mib = 2.0 ** 20
            print(f"| {mode} | {count} | {path} | {rate:.2f} | {largest / mib:.2f} | "
                  f"{memory.temp_size_in_bytes / mib:.2f} | "
                  f"{memory.argument_size_in_bytes / mib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
