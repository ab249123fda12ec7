"""Face detection, 5-point alignment and ArcFace features: MTCNN (bridges.mtcnn) or
insightface's SCRFD for detection, insightface's model zoo for ArcFace.

Models are loaded from explicit ONNX files (`insightface.model_zoo.get_model(path)`, which
routes by input/output shapes: a square 112 input becomes `ArcFaceONNX`, five or more
outputs a SCRFD detector). `FaceAnalysis` is not used: it insists on a full pack folder
and tries to download missing packs. Images are BGR uint8 arrays, as OpenCV reads them.
"""

from __future__ import annotations

import numpy as np

from bridges import require_path
from hyperface_jax.io.files import InputError

ALIGNED_SIZE = 112


def _providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _load(path, what: str):
    from insightface.model_zoo import get_model

    path = require_path(path, what)
    try:
        return get_model(str(path), providers=_providers())
    except Exception as e:  # noqa: BLE001 - onnxruntime/onnx raise many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"{what} {path} is not a loadable ONNX model: "
                         f"{type(e).__name__}: {first[:200]}") from None


def load_recognizer(path):
    """An insightface `ArcFaceONNX` for `path`; InputError if it is not one."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = _load(path, "recognizer")
    if not isinstance(model, ArcFaceONNX):
        raise InputError(f"recognizer {path} is not an ArcFace-style model (expected a fixed "
                         f"square input such as 1x3x112x112; insightface routed it to "
                         f"{type(model).__name__ if model is not None else 'nothing'})")
    return model


MTCNN = "mtcnn"  # --detector value: the paper's aligner with its shipped weights
DEFAULT_THRESHOLDS = {"scrfd": 0.5, MTCNN: 0.7}  # SCRFD's usual; MTCNN's final stage


def load_detector(path, *, threshold: float | None = None, input_size=(640, 640)):
    """A face detector with 5-point landmarks: `mtcnn` for MTCNN (bridges.mtcnn, the
    weights the facenet-pytorch wheel ships), else an insightface SCRFD .onnx file.
    `threshold` (None: the detector's default) is SCRFD's score threshold, or MTCNN's
    final-stage one. Both have `detect(bgr, max_num) -> (boxes with scores, landmarks)`."""
    if str(path) == MTCNN:
        from bridges import mtcnn

        return mtcnn.MTCNN(threshold=DEFAULT_THRESHOLDS[MTCNN] if threshold is None
                           else threshold)
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS["scrfd"]
    from insightface.model_zoo.scrfd import SCRFD

    model = _load(path, "detector")
    if not isinstance(model, SCRFD):
        raise InputError(f"detector {path} is not an insightface SCRFD detection model")
    model.prepare(ctx_id=0, det_thresh=threshold, input_size=tuple(input_size))
    return model


def align_largest(detector, bgr: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray | None:
    """The largest detected face aligned to size x size with the ArcFace 5-point template,
    or None when no face (with landmarks) is found."""
    from insightface.utils.face_align import norm_crop

    boxes, landmarks = detector.detect(bgr, max_num=0)
    if boxes is None or len(boxes) == 0 or landmarks is None:
        return None
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = int(np.argmax(area))
    return norm_crop(bgr, landmark=landmarks[best], image_size=size)


def features(recognizer, bgr_images: list[np.ndarray], *, flip: bool = False) -> np.ndarray:
    """Unit float32 ArcFace features (rows, d) of BGR uint8 face crops; with `flip`, the
    feature is the normalised sum of the image's and its mirror's."""
    if not bgr_images:
        return np.zeros((0, int(recognizer.output_shape[-1])), np.float32)
    f = np.asarray(recognizer.get_feat(list(bgr_images)), np.float64)
    if flip:
        f = f + np.asarray(recognizer.get_feat([np.ascontiguousarray(im[:, ::-1])
                                                for im in bgr_images]), np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return (f / np.maximum(norms, 1e-12)).astype(np.float32)
