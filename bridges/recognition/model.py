"""The network that is trained and evaluated: a backbone, optionally GroupFace on top.

`FaceModel(x) -> dict` with at least "embedding" (unnormalised); with GroupFace also the
group logits, probabilities and the GDN's intermediate feature. A model is rebuilt from
the small dict `spec` that `bridges.train` stores next to its weights, so
`bridges.evaluate` needs nothing but the checkpoint file.
"""

from pathlib import Path

import torch
from torch import nn

from bridges.recognition.groupface import GroupFace
from bridges.recognition.iresnet import build_backbone
from hyperface_jax.files import InputError

SPEC_KEYS = ("arch", "width", "embedding_size", "input_size", "dropout", "head", "groups",
             "group_aggregation")


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
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"model file {path} is not a bridges.train checkpoint ({first})") from None
    if not isinstance(blob, dict) or "spec" not in blob or "model" not in blob:
        raise InputError(f"model file {path} is not a bridges.train checkpoint (no spec/model)")
    model = FaceModel(blob["spec"])
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as e:
        raise InputError(f"model file {path}: weights do not fit the stored spec "
                         f"({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
