"""Margin heads: ArcFace, CosFace, AdaFace (and the plain normalised softmax they share).

Each head holds the class centres `weight` (num_classes, dim) and maps unnormalised
embeddings and labels to scaled logits; the loss is cross-entropy on those logits.
`margin_logits(cosine, labels, ...)` are the pure functions the tests check by hand.
Conventions follow insightface arcface_torch (ArcFace, CosFace) and the AdaFace
repository (AdaFace: margin scaled by the batch-normalised feature norm, norm statistics
kept by an exponential moving average with t_alpha = 0.01, initial mean 20 and std 100).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from bridges.recognition import distributed

HEADS = ("arcface", "cosface", "adaface", "groupface")
_EPS = 1e-3  # AdaFace's clamp of cosines and angles away from the ends of [-1, 1]


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, *, s: float = 64.0,
                   m: float = 0.5, easy_margin: bool = False) -> torch.Tensor:
    """s * cos(theta + m) on the target class, s * cos(theta) elsewhere. Beyond theta >
    pi - m (where cos(theta + m) stops decreasing) the target uses cos(theta) - m sin(m)
    (the insightface fallback that keeps the logit monotone)."""
    cosine = cosine.clamp(-1.0, 1.0)
    target = cosine.gather(1, labels[:, None])
    sine = torch.sqrt((1.0 - target * target).clamp_min(0.0))
    with_margin = target * math.cos(m) - sine * math.sin(m)
    if easy_margin:
        with_margin = torch.where(target > 0, with_margin, target)
    else:
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin,
                                  target - math.sin(math.pi - m) * m)
    return s * cosine.scatter(1, labels[:, None], with_margin)


def cosface_logits(cosine: torch.Tensor, labels: torch.Tensor, *, s: float = 64.0,
                   m: float = 0.35) -> torch.Tensor:
    """s * (cos(theta) - m) on the target class, s * cos(theta) elsewhere."""
    target = cosine.gather(1, labels[:, None])
    return s * cosine.scatter(1, labels[:, None], target - m)


def adaface_logits(cosine: torch.Tensor, labels: torch.Tensor, margin_scaler: torch.Tensor, *,
                   s: float = 64.0, m: float = 0.4) -> torch.Tensor:
    """AdaFace: target logit s * (cos(clip(theta - m * z)) - (m + m * z)) with z the
    norm-based margin scaler in [-1, 1]. z = -1 (low feature norm, low quality):
    cos(theta + m), ArcFace's angular margin and no additive one; z = 0: cos(theta) - m,
    CosFace's additive margin; z = 1 (high quality): cos(theta - m) - 2m, a negative
    angular margin and a doubled additive one, which weighs hard samples more."""
    cosine = cosine.clamp(-1 + _EPS, 1 - _EPS)
    z = margin_scaler.reshape(-1, 1)
    target = cosine.gather(1, labels[:, None])
    theta = torch.acos(target) - m * z
    target = torch.cos(theta.clamp(_EPS, math.pi - _EPS)) - (m + m * z)
    return s * cosine.scatter(1, labels[:, None], target)


class MarginHead(nn.Module):
    """Class centres plus one of the margin functions above."""

    def __init__(self, kind: str, num_classes: int, embedding_size: int = 512, *,
                 s: float = 64.0, m: float | None = None, h: float = 0.333,
                 t_alpha: float = 0.01, easy_margin: bool = False):
        super().__init__()
        if kind not in ("arcface", "cosface", "adaface"):
            raise ValueError(f"unknown margin head {kind!r}")
        self.kind = kind
        self.s = s
        self.m = {"arcface": 0.5, "cosface": 0.35, "adaface": 0.4}[kind] if m is None else m
        self.h = h
        self.t_alpha = t_alpha
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0, 0.01)
        # AdaFace's running statistics of the feature norms (as published: 20 and 100).
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """AdaFace: z = clip(h * (||f|| - mean) / (std + eps), -1, 1), with the norm
        statistics updated by EMA (over the global batch when distributed) in training."""
        safe = norms.detach().clamp(0.001, 100)
        if self.training:
            with torch.no_grad():
                gathered = distributed.all_gather_cat(safe.reshape(-1))
                mean, std = gathered.mean(), gathered.std()
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        z = (safe - self.batch_mean) / (self.batch_std + _EPS)
        return (z * self.h).clamp(-1, 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """(scaled margin logits, unmargined cosines) for a batch."""
        cosine = self.cosine(embeddings)
        if self.kind == "arcface":
            logits = arcface_logits(cosine, labels, s=self.s, m=self.m,
                                    easy_margin=self.easy_margin)
        elif self.kind == "cosface":
            logits = cosface_logits(cosine, labels, s=self.s, m=self.m)
        else:
            z = self.margin_scaler(embeddings.norm(dim=1))
            logits = adaface_logits(cosine, labels, z, s=self.s, m=self.m)
        return logits, cosine
