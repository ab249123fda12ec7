"""Backbones, margin heads and GroupFace: layout, hand-computed logits, aggregation,
self-distributed labels, the combined loss, group-aware similarity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bridges.recognition.config import TrainConfig
from bridges.recognition.groupface import (
    GroupFace,
    group_aware_similarity,
    self_distributed_labels,
)
from bridges.recognition.heads import MarginHead, adaface_logits, arcface_logits, cosface_logits
from bridges.recognition.iresnet import IBasicBlock, build_backbone
from bridges.recognition.train import Trainee

BLOCKS = {"ir18": [2, 2, 2, 2], "ir34": [3, 4, 6, 3], "ir50": [3, 4, 14, 3],
          "ir100": [3, 13, 30, 3], "se_ir50": [3, 4, 14, 3]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", list(BLOCKS))
def test_iresnet_layout(arch):
    net = build_backbone(arch, width=4)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    assert [len(s) for s in stages] == BLOCKS[arch]
    for i, stage in enumerate(stages):
        first = stage[0]
        assert isinstance(first, IBasicBlock)
        # Pre-activation block: BN first, stride 2 on the first block of each stage.
        assert first.conv2.stride == (2, 2) and all(b.conv2.stride == (1, 1) for b in stage[1:])
        assert first.conv1.out_channels == 4 * 2 ** i
        assert (first.se is not None) == arch.startswith("se_")
    # Output: BN - dropout - FC from 7 x 7 maps of 8 w channels - BN without learned scale.
    assert net.fc.in_features == 4 * 8 * 7 * 7 and net.fc.out_features == 512
    assert not net.features.weight.requires_grad


@pytest.mark.parametrize("arch", [
    "ir50", "se_ir50",
    # Same blocks as ir50, only more of them (its layout is checked above): slow.
    pytest.param("ir100", marks=pytest.mark.slow)])
def test_full_size_forward_backward(arch):
    torch.manual_seed(0)
    net = build_backbone(arch)
    x = torch.randn(2, 3, 112, 112)
    y = net(x)
    assert y.shape == (2, 512) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    assert net.conv1.weight.grad.abs().sum() > 0 and net.fc.weight.grad.abs().sum() > 0


def test_input_size_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("ir18", input_size=100)


def _cosines(target, other=0.1):
    cos = torch.full((1, 3), other)
    cos[0, 1] = target
    return cos, torch.tensor([1])


def test_arcface_logits_by_hand():
    cos, label = _cosines(0.5)
    logits = arcface_logits(cos, label, s=64, m=0.5)
    # cos(pi/3 + 0.5) = 0.5 cos 0.5 - (sqrt 3 / 2) sin 0.5
    expected = 0.5 * 0.8775825619 - 0.8660254038 * 0.4794255386
    assert logits[0, 1].item() == pytest.approx(64 * expected, abs=1e-4)
    assert logits[0, 0].item() == pytest.approx(6.4, abs=1e-5)
    # Beyond theta > pi - m: the insightface fallback cos - m sin(m).
    cos, label = _cosines(-0.95)
    logits = arcface_logits(cos, label, s=64, m=0.5)
    assert logits[0, 1].item() == pytest.approx(64 * (-0.95 - 0.5 * 0.4794255386), abs=1e-4)


def test_cosface_logits_by_hand():
    cos, label = _cosines(0.5)
    logits = cosface_logits(cos, label, s=64, m=0.35)
    assert logits[0, 1].item() == pytest.approx(64 * 0.15, abs=1e-4)
    assert logits[0, 2].item() == pytest.approx(6.4, abs=1e-5)


def test_adaface_logits_and_norm_statistics_by_hand():
    head = MarginHead("adaface", 3, 4)
    assert head.m == 0.4 and head.h == 0.333 and head.t_alpha == 0.01
    # Training: the EMA moves the published initial statistics (20, 100) towards the
    # batch's norms 10 and 30 (mean 20, unbiased std sqrt(200)).
    z = head.margin_scaler(torch.tensor([10.0, 30.0]))
    assert head.batch_mean.item() == pytest.approx(20.0, abs=1e-5)
    assert head.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * math.sqrt(200), abs=1e-4)
    std = 0.99 * 100 + 0.01 * math.sqrt(200)
    assert z.tolist() == pytest.approx([0.333 * -10 / (std + 1e-3), 0.333 * 10 / (std + 1e-3)],
                                       abs=1e-6)
    # Evaluation mode leaves the statistics alone.
    head.eval()
    head.margin_scaler(torch.tensor([55.0]))
    assert head.batch_mean.item() == pytest.approx(20.0, abs=1e-5)
    # Logits: theta' = acos(0.5) - m z, target = cos(theta') - (m + m z).
    cos, label = _cosines(0.5)
    zz = 0.25
    logits = adaface_logits(cos, label, torch.tensor([zz]), s=64, m=0.4)
    expected = math.cos(math.pi / 3 - 0.4 * zz) - (0.4 + 0.4 * zz)
    assert logits[0, 1].item() == pytest.approx(64 * expected, abs=1e-4)
    assert logits[0, 0].item() == pytest.approx(6.4, abs=1e-5)
    # z = -1 (low norm): pure additive margin 0 and angular margin -m ... i.e. theta + 0.4.
    logits = adaface_logits(cos, label, torch.tensor([-1.0]), s=64, m=0.4)
    assert logits[0, 1].item() == pytest.approx(64 * math.cos(math.pi / 3 + 0.4), abs=1e-4)


def test_head_cosines_use_normalised_embeddings_and_centres():
    head = MarginHead("cosface", 2, 2, s=1.0, m=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    logits, cosine = head(torch.tensor([[10.0, 10.0]]), torch.tensor([0]))
    assert cosine.tolist()[0] == pytest.approx([math.sqrt(0.5)] * 2, abs=1e-6)


def _groupface(aggregation):
    torch.manual_seed(0)
    return GroupFace(8, 6, groups=3, gdn_hidden=5, aggregation=aggregation).eval()


@pytest.mark.parametrize("aggregation", ["soft", "hard"])
def test_groupface_aggregation(aggregation):
    gf = _groupface(aggregation)
    shared = torch.randn(4, 8)
    out = gf(shared)
    instance = gf.instance(shared)
    groups = gf.group_bn(gf.group_fc(shared)).reshape(4, 3, 6)
    probs = gf.gdn_out(gf.gdn(instance)).softmax(1)
    torch.testing.assert_close(out["probs"], probs)
    if aggregation == "soft":
        expected = instance + sum(probs[:, k:k + 1] * groups[:, k] for k in range(3))
    else:
        expected = torch.stack([instance[i] + groups[i, probs[i].argmax()] for i in range(4)])
    torch.testing.assert_close(out["embedding"], expected)


def test_self_distributed_labels_balance_the_groups():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    # Naive labels would all be group 0; the batch mean (0.6167, 0.3833) shifts them.
    assert probs.argmax(1).tolist() == [0, 0, 0]
    assert self_distributed_labels(probs).tolist() == [0, 1, 1]


def test_groupface_loss_is_margin_plus_a_tenth_of_the_group_cross_entropy():
    c = TrainConfig(arch="ir18", width=4, input_size=16, embedding_size=8, head="groupface",
                    groups=3, group_margin="arcface")
    torch.manual_seed(0)
    trainee = Trainee(c, num_classes=5)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(1)
    loss, _ = trainee(x, y)
    out = trainee.model(x)
    logits, _ = trainee.head(out["embedding"], y)
    labels = self_distributed_labels(out["probs"])
    expected = F.cross_entropy(logits, y) + 0.1 * F.cross_entropy(out["group_logits"], labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert trainee.model.groupface.gdn_out.weight.grad.abs().sum() > 0


def test_group_aware_similarity_by_hand():
    emb = np.array([[1.0, 0.0, 0.0]])
    s = group_aware_similarity(emb, emb, np.array([[2.0, 0.0]]), np.array([[0.0, 3.0]]))
    # cos 1 plus beta * D^-gamma with D = sqrt(2) between the normalised features.
    assert s.item() == pytest.approx(1 + 0.1 * math.sqrt(2) ** (-1 / 3), abs=1e-6)
    s = group_aware_similarity(emb, -emb, np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]))
    assert s.item() == pytest.approx(-1 + 0.1 * 1e-3 ** (-1 / 3), abs=1e-4)
