"""`python -m bridges.embed` on a tiny ONNX recogniser (and a tiny SCRFD-format detector):
row order, folder labels and sidecar listing, features equal to an independent onnxruntime
pass, --flip, detection and alignment, skipped files listed, bad input."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bridges import embed, faces
from tests import bridges_models


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {"recognizer": bridges_models.recognizer(root / "recognizer.onnx"),
            "detector": bridges_models.detector(root / "det.onnx")}


def _noise(seed, size=112):
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.fixture
def aligned_tree(tmp_path):
    root = tmp_path / "faces"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a").mkdir()
    cv2.imwrite(str(root / "a" / "1.png"), _noise(1))
    cv2.imwrite(str(root / "a" / "2.jpg"), _noise(2))
    cv2.imwrite(str(root / "b" / "c" / "3.PNG"), _noise(3))
    cv2.imwrite(str(root / "a" / "small.png"), _noise(4, size=64))
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    # A dataset's own file beside its identity folders (bridges.generate writes this one):
    # 112 x 112, so it would be embedded as a sample of identity "." if it were one.
    cv2.imwrite(str(root / "identity_cos.png"), _noise(5))
    return root


def _reference_features(recognizer: Path, images: list[np.ndarray]) -> np.ndarray:
    """ArcFace features the plain way: BGR -> RGB, (x - 127.5) / 127.5, NCHW, onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(recognizer), providers=["CPUExecutionProvider"])
    blob = np.stack([(im[:, :, ::-1].astype(np.float32) - 127.5) / 127.5 for im in images])
    f = session.run(None, {session.get_inputs()[0].name: blob.transpose(0, 3, 1, 2)})[0]
    return f.astype(np.float64)


def test_aligned_inputs_rows_listing_and_values(onnx_models, aligned_tree, tmp_path):
    out = tmp_path / "gallery.npy"
    assert embed.main(["embed", f"--images={aligned_tree}", "--aligned", "--progress=false",
                       f"--recognizer={onnx_models['recognizer']}", f"--out={out}",
                       "--batch_size=2"]) == 0
    g = np.load(out)
    assert g.dtype == np.float32 and g.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    listing = json.loads((tmp_path / "gallery.json").read_text())
    assert listing["rows"] == ["a/1.png", "a/2.jpg", "b/c/3.PNG"]
    # Labels beside the embeddings: the identity is the image's folder.
    labels = np.load(tmp_path / "gallery_labels.npy", allow_pickle=False)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1]
    assert listing["identities"] == ["a", "b/c"] and listing["labels"] == "gallery_labels.npy"
    assert {s["path"]: s["reason"] for s in listing["skipped"]} == {
        "b/broken.jpg": "unreadable", "a/small.png": "not 112x112 (64x64)"}
    assert listing["ignored"] == ["identity_cos.png"] and listing["counts"]["images"] == 5
    images = [cv2.imread(str(aligned_tree / r)) for r in listing["rows"]]
    ref = _reference_features(onnx_models["recognizer"], images)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(g, ref, atol=1e-5)


def test_flip_averages_with_the_mirror_image(onnx_models, aligned_tree, tmp_path):
    out = tmp_path / "flip.npy"
    assert embed.main(["embed", f"--images={aligned_tree}", "--aligned", "--flip",
                       "--progress=false", f"--recognizer={onnx_models['recognizer']}",
                       f"--out={out}"]) == 0
    g = np.load(out)
    rows = json.loads((tmp_path / "flip.json").read_text())["rows"]
    images = [cv2.imread(str(aligned_tree / r)) for r in rows]
    f = _reference_features(onnx_models["recognizer"], images)
    f += _reference_features(onnx_models["recognizer"], [im[:, ::-1] for im in images])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(g, f, atol=1e-5)
    plain = _reference_features(onnx_models["recognizer"], images)
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    assert np.abs(g - plain).max() > 1e-3  # the mirror image really entered


def test_detector_aligns_the_face_and_lists_images_without_one(onnx_models, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    face = np.zeros((96, 96, 3), np.uint8)
    face[24:72, 24:72] = 255
    face[40:56, 40:56] = 200
    cv2.imwrite(str(root / "face.png"), face)
    cv2.imwrite(str(root / "dark.png"), np.zeros((96, 96, 3), np.uint8))
    out = tmp_path / "g.npy"
    assert embed.main(["embed", f"--images={root}", f"--detector={onnx_models['detector']}",
                       f"--recognizer={onnx_models['recognizer']}", f"--out={out}",
                       "--progress=false"]) == 0
    listing = json.loads((tmp_path / "g.json").read_text())
    assert listing["rows"] == ["face.png"]
    assert listing["skipped"] == [{"path": "dark.png", "reason": "no face"}]
    detector = faces.load_detector(onnx_models["detector"])
    crop = faces.align_largest(detector, face)
    assert crop.shape == (112, 112, 3)
    ref = _reference_features(onnx_models["recognizer"], [crop])
    np.testing.assert_allclose(np.load(out)[0], ref[0] / np.linalg.norm(ref[0]), atol=1e-5)


def test_bad_input_exits_2_with_one_line(onnx_models, aligned_tree, tmp_path, capsys):
    rec = f"--recognizer={onnx_models['recognizer']}"
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_bytes(b"garbage")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    cases = [
        ([f"--images={tmp_path / 'none'}", "--aligned", rec], "--images folder not found"),
        ([f"--images={empty}", "--aligned", rec], "holds no .jpg"),
        ([f"--images={junk}", "--aligned", rec], "no face could be embedded"),
        ([f"--images={aligned_tree}", "--aligned", f"--recognizer={tmp_path / 'r.onnx'}"],
         "recognizer not found"),
        ([f"--images={aligned_tree}", "--aligned", f"--recognizer={tmp_path / 'bad.onnx'}"],
         "not a loadable ONNX model"),
        ([f"--images={aligned_tree}", rec], "exactly one of --detector"),
        ([f"--images={aligned_tree}", "--aligned", rec,
          f"--detector={onnx_models['detector']}"], "exactly one of --detector"),
        ([f"--images={aligned_tree}", "--aligned", f"--recognizer={onnx_models['detector']}"],
         "not an ArcFace-style model"),
        ([f"--images={aligned_tree}", "--aligned", rec, "--bogus"], "bogus"),
    ]
    for extra, words in cases:
        out = tmp_path / "g.npy"
        code = embed.main(["embed", *extra, f"--out={out}", "--progress=false"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, extra
        assert len(err) == 1 and words in err[0], (extra, err)
        assert not out.exists() and not out.with_suffix(".json").exists()
        assert not (tmp_path / "g_labels.npy").exists()
