"""Compiled memory of the packing runner with and without donating the state.

    python benchmarks/bench_donation.py [--n=100000 --d=512 --m=100000 --batch=1000]

Compiles `solver.make_runner` (Adam, alpha 0.5) for full batch and for a mini-batch of
--batch rows, with `donate=False` and `donate=True`, from abstract shapes (nothing of
size n x d is allocated), and prints XLA's memory analysis of each program: arguments,
outputs, temporaries, and the bytes of the outputs that alias (reuse) the arguments. With
donation the state's output buffers are the input buffers, so a chunk does not need a
second copy of the n x d state and its optimizer state.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from hyperface_jax.engine import optimizers, solver


def analysis(n, d, m, batch, donate):
    opt = optimizers.on_sphere(optax.adam(0.01))
    config = solver.SolverConfig(alpha=0.5, batch_size=batch)
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    state = jax.eval_shape(lambda x: solver.init_state(x, opt, jax.random.PRNGKey(0)), x)
    gallery = jax.ShapeDtypeStruct((m, d), jnp.float32)
    run = solver.make_runner(opt, config, n, donate=donate)
    mem = run.lower(state, gallery, jnp.int32(1)).compile().memory_analysis()
    return mem


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    a = p.parse_args()
    gb = 1e9
    print(f"n={a.n} d={a.d} m={a.m}, JAX {jax.__version__} on {jax.default_backend()}")
    print("| mode | donate | arguments (GB) | outputs (GB) | aliased (GB) | temporaries (GB) |"
          " arguments + outputs - aliased + temporaries (GB) |")
    print("|---|---|---|---|---|---|---|")
    for mode, batch in (("full batch", 0), (f"mini-batch B={a.batch}", a.batch)):
        for donate in (False, True):
            mem = analysis(a.n, a.d, a.m, batch, donate)
            total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
            print(f"| {mode} | {donate} | {mem.argument_size_in_bytes / gb:.3f} | "
                  f"{mem.output_size_in_bytes / gb:.3f} | {mem.alias_size_in_bytes / gb:.3f} | "
                  f"{mem.temp_size_in_bytes / gb:.3f} | {total / gb:.3f} |")


if __name__ == "__main__":
    main()
