"""GroupFace (Kim et al., CVPR 2020): group-aware representations on top of a backbone.

The backbone's embedding is the shared feature. From it come the instance embedding
v_x (FC-BN) and K group embeddings g_k (K FC-BN layers, one batched matrix). The Group
Decision Network (GDN) is an MLP with batch norm on v_x: two FC-BN-PReLU layers give the
intermediate feature v^_x, a last FC the group logits, a softmax the probabilities p_k.
The final embedding is v_x + sum_k p_k g_k (soft, S-GroupFace) or v_x + g_argmax(p)
(hard, H-GroupFace). Self-distributed labelling keeps the groups balanced: the label of
a sample is argmax_k of p~_k = (p_k - E_batch[p_k]) / K + 1/K; the GDN learns those labels
by cross-entropy, weighted 0.1 against the margin loss on the final embedding.
Group-aware similarity (optional, for verification):
S*(x, y) = cos(final_x, final_y) + beta * D(v^_x, v^_y) ** -gamma, D the Euclidean distance
of the L2-normalised intermediate features, beta 0.1, gamma 1/3 (the paper's values).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bridges.recognition import distributed

GROUP_LOSS_WEIGHT = 0.1
# Group-aware similarity: beta and gamma are the paper's; the clamp of D is ours (D = 0
# for identical intermediate features would make the term infinite).
SIMILARITY_BETA, SIMILARITY_GAMMA, SIMILARITY_MIN_DISTANCE = 0.1, 1.0 / 3.0, 1e-3


class GroupFace(nn.Module):
    def __init__(self, shared_size: int = 512, embedding_size: int = 512, groups: int = 32,
                 gdn_hidden: int = 256, aggregation: str = "soft"):
        super().__init__()
        if aggregation not in ("soft", "hard"):
            raise ValueError(f"GroupFace aggregation must be 'soft' or 'hard', got {aggregation!r}")
        if groups < 2:
            raise ValueError(f"GroupFace needs at least 2 groups, got {groups}")
        self.groups = groups
        self.embedding_size = embedding_size
        self.aggregation = aggregation
        self.instance = nn.Sequential(nn.Linear(shared_size, embedding_size),
                                      nn.BatchNorm1d(embedding_size))
        self.group_fc = nn.Linear(shared_size, groups * embedding_size)
        self.group_bn = nn.BatchNorm1d(groups * embedding_size)
        self.gdn = nn.Sequential(
            nn.Linear(embedding_size, gdn_hidden), nn.BatchNorm1d(gdn_hidden), nn.PReLU(gdn_hidden),
            nn.Linear(gdn_hidden, gdn_hidden), nn.BatchNorm1d(gdn_hidden), nn.PReLU(gdn_hidden))
        self.gdn_out = nn.Linear(gdn_hidden, groups)

    def forward(self, shared: torch.Tensor) -> dict:
        instance = self.instance(shared)
        group_embeddings = self.group_bn(self.group_fc(shared)).reshape(
            -1, self.groups, self.embedding_size)
        intermediate = self.gdn(instance)
        group_logits = self.gdn_out(intermediate)
        probs = group_logits.softmax(dim=1)
        return {"embedding": aggregate(instance, group_embeddings, probs, self.aggregation),
                "instance": instance, "group_logits": group_logits, "probs": probs,
                "intermediate": intermediate}


def aggregate(instance, group_embeddings, probs, aggregation: str):
    """v_x + sum_k p_k g_k (soft) or v_x + g_argmax p (hard)."""
    if aggregation == "soft":
        return instance + torch.einsum("bk,bkd->bd", probs, group_embeddings)
    best = probs.argmax(dim=1)
    return instance + group_embeddings[torch.arange(len(best)), best]


def self_distributed_labels(probs: torch.Tensor) -> torch.Tensor:
    """argmax_k of (p_k - E_batch[p_k]) / K + 1/K, the mean over the global batch when
    distributed (no gradient)."""
    with torch.no_grad():
        k = probs.shape[1]
        mean = distributed.all_gather_cat(probs.detach()).mean(dim=0, keepdim=True)
        return ((probs - mean) / k + 1.0 / k).argmax(dim=1)


def group_loss(group_logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the GDN's prediction against the self-distributed labels."""
    return F.cross_entropy(group_logits, self_distributed_labels(probs))


def group_aware_similarity(emb_a, emb_b, inter_a, inter_b, *, beta: float = SIMILARITY_BETA,
                           gamma: float = SIMILARITY_GAMMA,
                           min_distance: float = SIMILARITY_MIN_DISTANCE):
    """S* = cos(final) + beta * D(intermediate) ** -gamma for paired rows (numpy or torch)."""
    as_t = [torch.as_tensor(v, dtype=torch.float32) for v in (emb_a, emb_b, inter_a, inter_b)]
    cos = (F.normalize(as_t[0], dim=1) * F.normalize(as_t[1], dim=1)).sum(1)
    d = (F.normalize(as_t[2], dim=1) - F.normalize(as_t[3], dim=1)).norm(dim=1)
    return cos + beta * d.clamp_min(min_distance) ** (-gamma)


def group_term_of_cosine(cos):
    """beta * D ** -gamma of S* from the cosine of two unit intermediate features, whose
    Euclidean distance is D = sqrt(2 - 2 cos) (numpy, any shape: a whole score matrix)."""
    distance = np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(cos, np.float64), 0.0))
    return SIMILARITY_BETA * np.maximum(distance, SIMILARITY_MIN_DISTANCE) ** -SIMILARITY_GAMMA
