"""The network that is trained and evaluated: a backbone, optionally GroupFace on top.

`FaceModel(x) -> dict` with at least "embedding" (unnormalised); with GroupFace also the
group logits, probabilities and the GDN's intermediate feature. A model is rebuilt from
the small dict `spec` that `bridges.train` stores next to its weights, so
`bridges.evaluate` needs nothing but the checkpoint file.
"""

from pathlib import Path

import torch
from torch import nn

from bridges import require_path
from bridges.recognition.groupface import GroupFace
from bridges.recognition.heads import HEADS
from bridges.recognition.iresnet import ARCHS, build_backbone
from hyperface_jax.io.files import InputError

SPEC_KEYS = ("arch", "width", "embedding_size", "input_size", "dropout", "head", "groups",
             "group_aggregation")
# Largest input side a stored spec may ask for (the published models use 112).
MAX_INPUT_SIZE = 1024


class FaceModel(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.spec = dict(spec)
        self.backbone = build_backbone(
            spec["arch"], width=spec["width"], embedding_size=spec["embedding_size"],
            input_size=spec["input_size"], dropout=spec["dropout"])
        self.groupface = None
        if spec["head"] == "groupface":
            self.groupface = GroupFace(spec["embedding_size"], spec["embedding_size"],
                                       groups=spec["groups"],
                                       aggregation=spec["group_aggregation"])

    def forward(self, x) -> dict:
        shared = self.backbone(x)
        if self.groupface is None:
            return {"embedding": shared}
        return self.groupface(shared)


def load_model(path, device="cpu") -> FaceModel:
    """A FaceModel in eval mode from a file written by `bridges.train` (an epoch
    checkpoint or model.pt). Loading never unpickles code (torch weights_only)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    require_path(path, "model file")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"model file {path} is not a bridges.train checkpoint ({first})") from None
    if not isinstance(blob, dict) or "spec" not in blob or "model" not in blob:
        raise InputError(f"model file {path} is not a bridges.train checkpoint (no spec/model)")
    check_spec(blob["spec"], path)
    try:
        model = FaceModel(blob["spec"])
    except Exception as e:  # noqa: BLE001 - any spec the model cannot be built from
        raise InputError(f"model file {path}: cannot build the model its spec describes "
                         f"({type(e).__name__}: {e})") from None
    problem = weights_problem(blob["model"], model.state_dict())
    if problem:
        raise InputError(f"model file {path}: {problem}")
    try:
        model.load_state_dict(blob["model"])
    except Exception as e:  # noqa: BLE001 - e.g. a tensor torch cannot copy (complex, sparse)
        raise InputError(f"model file {path}: weights cannot be loaded "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
    return model.to(device).eval()


def weights_problem(weights, expected: dict, what: str = "weights",
                    fit: str = "the stored spec") -> str | None:
    """The first problem of a stored state dict, or None: not a dict of tensors, a
    missing or unexpected key, a shape that does not fit `fit` (`expected`: the state
    dict of the module it is meant for), NaN or Inf."""
    if not isinstance(weights, dict):
        return f"{what} are a {type(weights).__name__}, not a dict of tensors"
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    for keys, problem in ((missing, "lack"), (unexpected, "hold unexpected")):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"{what} do not fit {fit}: they {problem} {keys[0]!r}{more}"
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            return f"{what} entry {key!r} is a {type(value).__name__}, not a tensor"
        if value.shape != expected[key].shape:
            return (f"{what} do not fit {fit}: {key!r} is {tuple(value.shape)}, not "
                    f"{tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{what} entry {key!r} holds NaN or Inf"
    return None


def check_spec(spec, path) -> None:
    """InputError naming the file and the first problem of a stored model spec."""
    if not isinstance(spec, dict):
        raise InputError(f"model file {path}: spec is a {type(spec).__name__}, not a dict")
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise InputError(f"model file {path}: spec lacks {', '.join(missing)}")

    def integer(key, low, high=None):
        v = spec[key]
        return isinstance(v, int) and not isinstance(v, bool) and v >= low and (
            high is None or v <= high)

    checks = [
        (spec["arch"] in ARCHS, f"unknown architecture {spec['arch']!r} (known: "
                                f"{', '.join(ARCHS)})"),
        (spec["head"] in HEADS, f"unknown head {spec['head']!r} (known: {', '.join(HEADS)})"),
        (integer("width", 1, 4096) and integer("embedding_size", 2, 65536),
         "width and embedding_size must be integers in [1, 4096] and [2, 65536]"),
        (integer("input_size", 16, MAX_INPUT_SIZE) and spec["input_size"] % 16 == 0,
         f"input_size must be a multiple of 16 up to {MAX_INPUT_SIZE}, got "
         f"{spec['input_size']!r}"),
        (isinstance(spec["dropout"], int | float) and 0 <= spec["dropout"] < 1,
         f"dropout must be in [0, 1), got {spec['dropout']!r}"),
        (spec["head"] != "groupface" or (integer("groups", 2, 4096)
                                         and spec["group_aggregation"] in ("soft", "hard")),
         "a GroupFace spec needs groups in [2, 4096] and group_aggregation soft or hard"),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(f"model file {path}: {problem}")
