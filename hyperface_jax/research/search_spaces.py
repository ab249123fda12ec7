"""The tuning search spaces of `compare --tune_trials`: one row per optimizer.

Each entry maps a PackConfig flag to (low, high, scale):
  log    log-uniform in [low, high]
  linear uniform in [low, high]
  log1m  1 - value is log-uniform in [1 - high, 1 - low] (momenta, b2: 0.9 ... 0.999)
Flags not listed keep the flagfile's value (schedule, steps, objective ...). An optimizer
without a row uses DEFAULT. Override the whole table with `--search_space=file.json`
(the same mapping in JSON: {"sgd": {"learning_rate": [0.01, 1000, "log"], ...}, ...}).

Why these ranges: with the mean over n identities in the loss, each row's gradient is
O(1/n), and SGD (no rescaling) needs a learning rate roughly n times Adam's, so its range
reaches 1e4; Lion's sign update moves every coordinate by the full learning rate, so its
range starts at 1e-6. Weight decay is not tuned: on the sphere, decoupled weight decay
shrinks every row by the same factor and the renormalisation after each step undoes it
(it only rescales the step slightly), so it is a second learning rate, not a regulariser.
Learning-rate-free optimizers (Prodigy, D-Adaptation, COCOB, DoG) get a multiplier
around 1.
"""

LR_FREE = {"learning_rate": (0.1, 10.0, "log")}

DEFAULT = {"learning_rate": (1e-4, 1.0, "log")}

SEARCH_SPACES: dict[str, dict[str, tuple[float, float, str]]] = {
    "sgd": {"learning_rate": (1e-2, 1e4, "log"), "momentum": (0.0, 0.99, "log1m")},
    "adam": {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m")},
    "adamw": {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m")},
    "nadam": {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m")},
    "riemannian_adam": {"learning_rate": (1e-4, 1.0, "log"), "b2": (0.9, 0.9999, "log1m")},
    "riemannian_adam_coordinatewise": {"learning_rate": (1e-4, 1.0, "log"),
                                       "b2": (0.9, 0.9999, "log1m")},
    "lion": {"learning_rate": (1e-6, 1e-1, "log"), "b2": (0.9, 0.999, "log1m")},
    "rmsprop": {"learning_rate": (1e-5, 1.0, "log"), "momentum": (0.0, 0.99, "log1m")},
    "lamb": {"learning_rate": (1e-4, 1.0, "log")},
    "sign_sgd": {"learning_rate": (1e-6, 1e-1, "log")},
    "signum": {"learning_rate": (1e-6, 1e-1, "log")},
    "schedule_free_sgd": {"learning_rate": (1e-2, 1e4, "log")},
    "prodigy": LR_FREE,
    "dadapt_adamw": LR_FREE,
    "cocob": LR_FREE,
    "dog": LR_FREE,
}


def space_of(name: str, table: dict | None = None) -> dict[str, tuple[float, float, str]]:
    table = SEARCH_SPACES if table is None else table
    return {k: tuple(v) for k, v in table.get(name, table.get("default", DEFAULT)).items()}
