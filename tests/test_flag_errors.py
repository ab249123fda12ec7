"""The engine's argument errors become the CLI's flag lines (`jobs.flag_errors`)."""

import pytest

from hyperface_jax.engine import mesh, optimizers
from hyperface_jax.jobs.flag_errors import flag_error


@pytest.mark.parametrize("message, names, line", [
    ("num_processes/process_id need coordinator_address (or distributed for cluster "
     "auto-detection)", ("num_processes", "process_id", "coordinator_address", "distributed"),
     "--num_processes/--process_id need --coordinator_address (or --distributed for cluster "
     "auto-detection)"),
    # A name inside a longer one, or a word that merely starts like one, is left alone.
    ("schedule=staircase needs decay_every >= 1 and 0 < decay_rate <= 1",
     ("schedule", "decay", "decay_every", "decay_rate"),
     "--schedule=staircase needs --decay_every >= 1 and 0 < --decay_rate <= 1"),
    ("devices=8 but 4 device(s) are available", ("devices",),
     "--devices=8 but 4 device(s) are available"),
])
def test_argument_names_become_flags_and_nothing_else_does(message, names, line):
    assert str(flag_error(ValueError(message), names)) == line


def test_the_engine_names_arguments_and_the_job_layer_names_flags():
    with pytest.raises(ValueError, match="^devices must be 'all' or a positive count") as e:
        mesh.make_mesh("two")
    assert str(flag_error(e.value, ("devices",))).startswith("--devices must be")
    with pytest.raises(ValueError) as e:
        optimizers.make_optimizer("sgd", optimizers.make_schedule("constant", 0.1, steps=1),
                                  b1=0.9)
    assert str(flag_error(e.value, ("optimizer", "b1"))) == "--optimizer=sgd does not take --b1"
