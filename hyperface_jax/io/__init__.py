"""Files and runs: atomic writers and checked readers (`files`), the output folder and its
lock (`runs`), checksums (`integrity`), orbax checkpoints (`checkpoint`) and plots."""
