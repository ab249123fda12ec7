"""bridges.mtcnn with the REAL MTCNN weights that the facenet-pytorch wheel ships, on the
real photos that the insightface package ships: every face found, the cascade equal to
the wheel's own, crops on the ArcFace template, rotated and mirrored photos aligned alike."""

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bridges import embed, faces, mtcnn

PHOTOS = Path(__import__("insightface").__file__).parent / "data" / "images"
# t1.jpg at half size (640 x 443): a centre point of each of its six faces, marked by eye.
T1_FACES = [(58, 165), (165, 100), (262, 160), (405, 185), (490, 55), (590, 165)]
EYES_AND_MOUTH = [0, 1, 3, 4]  # of the five points: eyes, nose, mouth corners


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def detector():
    return faces.load_detector("mtcnn")


@pytest.fixture(scope="module")
def t1():
    image = cv2.imread(str(PHOTOS / "t1.jpg"))
    return cv2.resize(image, (640, 443), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def t1_found(detector, t1):
    return detector.detect(t1)


@pytest.fixture(scope="module")
def tom():
    """Tom_Hanks_54745.png (a 112 x 112 crop on the ArcFace template) on a grey canvas."""
    face = cv2.imread(str(PHOTOS / "Tom_Hanks_54745.png"))
    return cv2.copyMakeBorder(face, 56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(127,) * 3)


def test_weights_are_the_wheels_files_checked_by_sha256(tmp_path):
    import hashlib

    folder = mtcnn.weights_folder()
    assert folder.parts[-2:] == ("facenet_pytorch", "data")
    for name, digest in mtcnn.WEIGHTS_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    (tmp_path / "pnet.pt").write_bytes((folder / "pnet.pt").read_bytes()[:-1] + b"\0")
    with pytest.raises(mtcnn.InputError, match="reinstall: pip install --no-deps"):
        mtcnn.load_net(mtcnn.PNet, tmp_path / "pnet.pt")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68; box 3 lies inside box 0 (IoU 0.16, over the smaller 1.0).
    assert mtcnn.nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    assert mtcnn.nms(boxes, scores, 0.7).tolist() == [3, 1, 0, 2]
    assert mtcnn.nms(boxes, scores, 0.7, mode="min").tolist() == [3, 1, 2]


def test_every_face_of_the_group_photo_is_found_and_nothing_else(t1_found):
    boxes, points = t1_found
    assert boxes.shape == (6, 5) and points.shape == (6, 5, 2)
    for x, y in T1_FACES:
        inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
        assert inside.sum() == 1, (x, y)
    assert (boxes[:, 4] > 0.9).all()
    # Landmarks inside their box, the left eye left of the right eye, eyes above the mouth.
    for b, p in zip(boxes, points):
        assert ((p[:, 0] >= b[0] - 2) & (p[:, 0] <= b[2] + 2)).all()
        assert p[0, 0] < p[1, 0] and p[[0, 1], 1].max() < p[[3, 4], 1].min()


def test_our_cascade_is_the_wheels_own_detect_face(detector, t1, t1_found, monkeypatch):
    """facenet-pytorch's detect_face (its code, run here with a numpy stand-in for the
    torchvision NMS it imports) finds the same boxes and landmarks to 1e-3 pixel."""
    def batched_nms(boxes, scores, idxs, threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
        return torch.as_tensor(mtcnn.nms(shifted.double().numpy(), scores.double().numpy(),
                                         threshold))

    stand_in = {name: types.ModuleType(name) for name in (
        "torchvision", "torchvision.transforms", "torchvision.transforms.functional",
        "torchvision.ops", "torchvision.ops.boxes")}
    stand_in["torchvision.ops.boxes"].batched_nms = batched_nms
    for name, module in stand_in.items():
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stand_in[parent], child, module)
    for name in [m for m in sys.modules if m.startswith("facenet_pytorch")]:
        monkeypatch.delitem(sys.modules, name)
    from facenet_pytorch.models.utils.detect_face import detect_face

    rgb = np.ascontiguousarray(t1[:, :, ::-1])
    with torch.inference_mode():
        theirs_boxes, theirs_points = detect_face(
            rgb, mtcnn.MIN_FACE, detector.pnet, detector.rnet, detector.onet,
            list(mtcnn.THRESHOLDS), mtcnn.FACTOR, "cpu")
    boxes, points = t1_found
    order = np.argsort(-theirs_boxes[0][:, 4].astype(float), kind="stable")
    np.testing.assert_allclose(theirs_boxes[0][order].astype(float), boxes, atol=1e-3)
    np.testing.assert_allclose(theirs_points[0][order].astype(float), points, atol=1e-3)


def _redetected(detector, crop):
    """The five points MTCNN finds on an aligned 112 x 112 crop (on a grey margin)."""
    big = cv2.copyMakeBorder(crop, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=(127,) * 3)
    boxes, points = detector.detect(big)
    assert len(boxes) == 1
    return points[0] - 40


def test_aligned_crops_put_eyes_and_mouth_corners_on_the_arcface_template(
        detector, t1, t1_found, tom):
    """Each face aligned to 112 x 112, then detected again on the crop: its eyes and mouth
    corners lie on the ArcFace template within a few pixels. The Tom Hanks photo is a crop
    insightface aligned (other landmarks): MTCNN finds them on the template too."""
    from insightface.utils.face_align import arcface_dst, norm_crop

    errors = []
    for p in t1_found[1]:
        crop = norm_crop(t1, p)
        errors.append(np.linalg.norm(_redetected(detector, crop) - arcface_dst, axis=1))
    tom_points = detector.detect(tom)[1][0] - 56
    errors.append(np.linalg.norm(tom_points - arcface_dst, axis=1))
    errors = np.array(errors)[:, EYES_AND_MOUTH]
    assert errors.max() < 10 and errors.mean() < 5, errors.round(1)
    aligned = faces.align_largest(detector, tom)
    assert aligned.shape == (112, 112, 3)


@pytest.mark.parametrize("angle", [-20, 20])
def test_a_rotated_photo_aligns_like_the_upright_one(detector, tom, angle):
    upright = detector.detect(tom)[1][0]
    turn = cv2.getRotationMatrix2D((112, 112), angle, 1.0)
    rotated = cv2.warpAffine(tom, turn, (224, 224), borderValue=(127,) * 3)
    boxes, points = detector.detect(rotated)
    assert len(boxes) == 1
    back = np.c_[points[0], np.ones(5)] @ cv2.invertAffineTransform(turn).T
    assert np.linalg.norm(back - upright, axis=1)[EYES_AND_MOUTH].max() < 4
    same = faces.align_largest(detector, rotated).astype(int)
    assert np.abs(same - faces.align_largest(detector, tom)).mean() < 20


def test_a_mirrored_photo_aligns_to_the_mirrored_crop(detector, t1, t1_found):
    mirrored = np.ascontiguousarray(t1[:, ::-1])
    boxes, points = detector.detect(mirrored)
    assert len(boxes) == 6
    from insightface.utils.face_align import norm_crop

    crops = [norm_crop(t1, p)[:, ::-1].astype(int) for p in t1_found[1]]
    for p in points:
        # Mirror back: x -> W - 1 - x, and the left and right points trade places.
        back = np.stack([t1.shape[1] - 1 - p[:, 0], p[:, 1]], axis=1)[[1, 0, 2, 4, 3]]
        k = int(np.argmin([np.linalg.norm(back - q, axis=1).max() for q in t1_found[1]]))
        assert np.linalg.norm(back - t1_found[1][k], axis=1)[EYES_AND_MOUTH].max() < 6
        diffs = [np.abs(norm_crop(mirrored, p) - c).mean() for c in crops]
        assert int(np.argmin(diffs)) == k  # the crop is its own face's, mirrored


def test_embed_with_mtcnn_aligns_real_photos(tmp_path):
    from bridges import demo_models

    photos = tmp_path / "photos"
    photos.mkdir()
    tom = cv2.imread(str(PHOTOS / "Tom_Hanks_54745.png"))
    cv2.imwrite(str(photos / "tom.png"),
                cv2.copyMakeBorder(tom, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=(127,) * 3))
    cv2.imwrite(str(photos / "grey.png"), np.full((120, 120, 3), 127, np.uint8))
    rec = demo_models.recognizer(tmp_path / "rec.onnx")
    assert embed.main(["embed", f"--images={photos}", "--detector=mtcnn", f"--recognizer={rec}",
                       f"--out={tmp_path / 'g.npy'}", "--progress=false"]) == 0
    listing = json.loads((tmp_path / "g.json").read_text())
    assert listing["rows"] == ["tom.png"] and listing["detector"] == "mtcnn"
    assert listing["skipped"] == [{"path": "grey.png", "reason": "no face"}]


def test_missing_wheel_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real(name, *a))
    from bridges import demo_models

    (tmp_path / "p").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    rec = demo_models.recognizer(tmp_path / "rec.onnx")
    assert embed.main(["embed", f"--images={tmp_path / 'p'}", "--detector=mtcnn",
                       f"--recognizer={rec}", f"--out={tmp_path / 'g.npy'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps facenet-pytorch==2.6.0" in err[0]


def test_generate_align_with_mtcnn_lists_noise_as_faceless(tmp_path):
    """bridges.generate --align --detector=mtcnn on the demo Arc2Face: its pictures are
    noise, so MTCNN (real weights) finds no face and every image goes to _no_face/."""
    from bridges import demo_models, generate

    base = demo_models.base_model(tmp_path / "sd15")
    vocab = len(json.loads((base / "tokenizer" / "vocab.json").read_text()))
    a2f = demo_models.arc2face(tmp_path / "a2f", vocab_size=vocab)
    refs = np.eye(512, dtype=np.float32)[:1]
    np.save(tmp_path / "refs.npy", refs)
    out = tmp_path / "dataset"
    assert generate.main(["generate", f"--references={tmp_path / 'refs.npy'}",
                          f"--arc2face={a2f}", f"--base_model={base}", f"--out_dir={out}",
                          "--images_per_identity=2", "--micro_batch=2", "--steps=1",
                          "--threads=1", "--progress=false", "--align",
                          "--detector=mtcnn"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["no_face"] == ["_no_face/000000/000.png", "_no_face/000000/001.png"]
    assert report["flags"]["detector"] == "mtcnn"
