"""iResNet backbones (insightface arcface_torch layout) with an optional SE variant.

Pre-activation blocks BN-conv3x3-BN-PReLU-conv3x3(stride)-BN (+ optional squeeze-and-
excitation) with a 1x1-conv-BN shortcut where the shape changes; the first block of each
of the four stages halves the resolution; output BN-dropout-flatten-FC-BN (the last BN
without a learned scale) to the embedding. Input 112 x 112 (any multiple of 16 works:
the FC is sized from `input_size`). `width` scales every channel count (64 in the
published models), so tests can build the same network small.
"""

import torch
from torch import nn

LAYERS = {
    "ir18": (2, 2, 2, 2),
    "ir34": (3, 4, 6, 3),
    "ir50": (3, 4, 14, 3),
    "ir100": (3, 13, 30, 3),
}
ARCHS = (*LAYERS, "se_ir50")


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x):
        w = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(w))))


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, se: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.se = SqueezeExcite(planes) if se else None
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """`forward(images (B, 3, S, S)) -> embeddings (B, embedding_size)` (not normalised:
    the norm carries the quality signal AdaFace uses)."""

    def __init__(self, layers, *, se: bool = False, width: int = 64, embedding_size: int = 512,
                 input_size: int = 112, dropout: float = 0.0):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        stages = []
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            stage = [IBasicBlock(inplanes, planes, 2, se)]
            stage += [IBasicBlock(planes, planes, 1, se) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        spatial = input_size // 16
        self.fc = nn.Linear(inplanes * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.embedding_size = embedding_size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def build_backbone(arch: str, *, width: int = 64, embedding_size: int = 512,
                   input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """`arch` is one of ir18, ir34, ir50, ir100, se_ir50."""
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; expected one of {', '.join(ARCHS)}")
    se = arch.startswith("se_")
    layers = LAYERS[arch.removeprefix("se_")]
    return IResNet(layers, se=se, width=width, embedding_size=embedding_size,
                   input_size=input_size, dropout=dropout)
