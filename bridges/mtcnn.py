"""MTCNN, the face detector and 5-point aligner the HyperFace paper used, with real weights.

The three-stage cascade of Zhang et al. (2016): P-Net proposes face windows over an image
pyramid, R-Net rejects and refines them on 24 x 24 crops, O-Net scores them on 48 x 48
crops and places five landmarks (eyes, nose tip, mouth corners). The modules and the
cascade are ours; the pretrained weights are the state dicts that the facenet-pytorch
wheel ships (`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT licence, converted from the
original Caffe models). That wheel pins torch < 2.3, numpy < 2 and Pillow < 10.3 and
needs torchvision for its non-maximum suppression, so it is installed without its
dependencies (`pip install --no-deps facenet-pytorch==2.6.0`) and never imported: we find
its data folder, check each file's sha256 and read it with torch's weights-only loader
(no code runs). Our NMS is plain numpy.

`MTCNN.detect(bgr)` returns (boxes (n, 5) [x1, y1, x2, y2, score], landmarks (n, 5, 2)),
the interface of insightface's SCRFD, so `bridges.faces.align_largest` warps either to the
ArcFace 112 x 112 template.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hyperface_jax.io.files import InputError

WHEEL = "facenet-pytorch==2.6.0"
INSTALL = f"pip install --no-deps {WHEEL}"
# sha256 of the files in facenet_pytorch-2.6.0-py3-none-any.whl (checked on every load).
WEIGHTS_SHA256 = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
# The cascade's published settings: smallest face, per-stage score thresholds, pyramid step.
MIN_FACE, THRESHOLDS, FACTOR = 20, (0.6, 0.7, 0.7), 0.709


class PNet(nn.Module):
    """12 x 12 fully convolutional proposer: face probability and box offsets per cell."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


def _dense_input(x):
    # The converted weights expect the feature map flattened in (W, H, C) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """24 x 24 refiner: face probability and box offsets per crop."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_dense_input(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """48 x 48 output stage: face probability, box offsets and five landmarks per crop."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the 5 points, then their y

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_dense_input(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def weights_folder() -> Path:
    """facenet-pytorch's data folder, found without importing the package (its __init__
    imports torchvision); InputError with the install command when it is missing."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        spec = None
    folder = (Path(next(iter(spec.submodule_search_locations))) / "data"
              if spec is not None and spec.submodule_search_locations else None)
    if folder is None or not all((folder / name).is_file() for name in WEIGHTS_SHA256):
        raise InputError(f"--detector=mtcnn needs the MTCNN weights shipped in the "
                         f"{WHEEL} wheel; install it without its stale pins: {INSTALL}")
    return folder


def load_net(cls, path: Path) -> nn.Module:
    """`cls` with the state dict at `path`, after checking the file's sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256[path.name]:
        raise InputError(f"MTCNN weights {path} have sha256 {digest[:12]}..., not the "
                         f"{WHEEL} file's {WEIGHTS_SHA256[path.name][:12]}...; reinstall: "
                         f"{INSTALL}")
    net = cls()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first. "union": overlap is
    intersection over union with continuous areas (torchvision's convention); "min":
    intersection over the smaller box, with the +1 pixel areas of the original code."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    one = 1.0 if mode == "min" else 0.0
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        overlap = (inter / np.minimum(area[i], area[rest]) if mode == "min"
                   else inter / (area[i] + area[rest] - inter))
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (side: the longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the nets' box offsets (fractions of the +1 pixel width and height)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """size x size area-resampled crops of the (integer, image-clipped) boxes, normalised."""
    _, _, H, W = image.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    # At least one pixel, also for a box outside the image (its score will be low).
    x2, y2 = np.maximum(np.minimum(b[:, 2], W), x1), np.maximum(np.minimum(b[:, 3], H), y1)
    crops = [F.interpolate(image[:, :, y1[k] - 1:y2[k], x1[k] - 1:x2[k]], size=(size, size),
                           mode="area") for k in range(len(b))]
    return (torch.cat(crops) - 127.5) * 0.0078125


class MTCNN:
    """The cascade on one image at a time, with the weights of weights_folder()."""

    def __init__(self, *, threshold: float = THRESHOLDS[2], min_face: int = MIN_FACE,
                 folder: Path | None = None):
        folder = Path(folder) if folder else weights_folder()
        self.pnet = load_net(PNet, folder / "pnet.pt")
        self.rnet = load_net(RNet, folder / "rnet.pt")
        self.onet = load_net(ONet, folder / "onet.pt")
        self.thresholds = (THRESHOLDS[0], THRESHOLDS[1], threshold)
        self.min_face = min_face

    def detect(self, bgr: np.ndarray, max_num: int = 0):
        """(boxes (n, 5): x1, y1, x2, y2, score; landmarks (n, 5, 2): left eye, right eye,
        nose, left and right mouth corner as (x, y) pixels) of the faces in a BGR uint8
        image, best first (at most max_num when > 0)."""
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            boxes = self._propose(image)
            if len(boxes):
                boxes = self._reject(image, boxes)
            points = np.zeros((0, 5, 2), np.float32)
            if len(boxes):
                boxes, points = self._output(image, boxes)
        if max_num > 0:
            boxes, points = boxes[:max_num], points[:max_num]
        return boxes[:, :5].astype(np.float32), points.astype(np.float32)

    def _propose(self, image):
        _, _, H, W = image.shape
        scale = 12.0 / self.min_face
        found = []
        while min(H, W) * scale >= 12:
            x = F.interpolate(image, size=(int(H * scale + 1), int(W * scale + 1)), mode="area")
            offsets, prob = self.pnet((x - 127.5) * 0.0078125)
            p = prob[0, 1].numpy()
            ys, xs = np.nonzero(p >= self.thresholds[0])
            if len(ys):
                cell = np.stack([xs, ys], axis=1).astype(np.float64)
                top_left = np.floor((2 * cell + 1) / scale)
                bottom_right = np.floor((2 * cell + 12) / scale)
                reg = offsets[0][:, ys, xs].numpy().T
                b = np.concatenate([top_left, bottom_right, p[ys, xs][:, None], reg], axis=1)
                found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
            scale *= FACTOR
        if not found:
            return np.zeros((0, 5))
        b = np.concatenate(found)
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        moved = b[:, :4] + b[:, 5:9] * np.stack([w, h, w, h], axis=1)
        return _square(np.concatenate([moved, b[:, 4:5]], axis=1))

    def _reject(self, image, boxes):
        offsets, prob = self.rnet(_crops(image, boxes, 24))
        score = prob[:, 1].numpy()
        keep = score > self.thresholds[1]
        b = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        reg = offsets.numpy()[keep]
        pick = nms(b[:, :4], b[:, 4], 0.7)
        return _square(_refine(b[pick], reg[pick]))

    def _output(self, image, boxes):
        offsets, marks, prob = self.onet(_crops(image, boxes, 48))
        score = prob[:, 1].numpy()
        keep = score > self.thresholds[2]
        b = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        marks, reg = marks.numpy()[keep], offsets.numpy()[keep]
        w = b[:, 2] - b[:, 0] + 1
        h = b[:, 3] - b[:, 1] + 1
        points = np.stack([w[:, None] * marks[:, :5] + b[:, 0:1] - 1,
                           h[:, None] * marks[:, 5:] + b[:, 1:2] - 1], axis=2)
        b = _refine(b, reg)
        pick = nms(b[:, :4], b[:, 4], 0.7, mode="min")
        return b[pick], points[pick]
