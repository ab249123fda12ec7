"""`python -m bridges.train --flagfile=configs/train_hyperface.flags --data=D --out_dir=O`

Trains a face-recognition model on a folder-per-identity image set (see
bridges/recognition/). Multi-process: `torchrun --nproc_per_node=N -m bridges.train ...`.
Re-running on the same --out_dir resumes after the last finished epoch.
Exit codes: 0 success, 2 bad input (one line on stderr), 1 failure, 130 interrupted.
"""


from bridges import require_torch_extra
from bridges.recognition.config import TrainConfig
from hyperface_jax import cli


def input_error_line(e: Exception) -> str:
    """One line for an InputError, also when a DataLoader worker re-raised it with its
    traceback in the message."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else type(e).__name__
    return line.split("InputError: ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    require_torch_extra("bridges.train")

    def job(c: TrainConfig):
        from bridges.recognition.train import run

        run(c)

    return cli.run_main(argv, TrainConfig, job, describe=input_error_line)


if __name__ == "__main__":
    cli.exit_process(main())
