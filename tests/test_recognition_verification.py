"""The 10-fold protocol against brute force and insightface's distance formulation,
TAR at FAR, Borda ranking, the .bin format (round trip, crafted pickles refused)."""

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import KFold

from bridges import bins
from bridges.verification import COSINE_THRESHOLDS, rank_models, tar_at_far, ten_fold_accuracy
from hyperface_jax.io.files import InputError


def _synthetic_scores(n, seed=0):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = np.where(issame, rng.normal(0.45, 0.2, n), rng.normal(0.1, 0.2, n)).clip(-1, 1)
    return scores, issame


def _brute_force(scores, issame, thresholds):
    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(scores):
        best_acc, best_t = -1.0, None
        for t in thresholds:
            acc = np.mean([(scores[i] > t) == issame[i] for i in train])
            if acc > best_acc:  # first best, as np.argmax
                best_acc, best_t = acc, t
        accuracies.append(np.mean([(scores[i] > best_t) == issame[i] for i in test]))
    return np.array(accuracies)


@pytest.mark.parametrize("n", [300, 307])
def test_ten_fold_accuracy_equals_brute_force(n):
    scores, issame = _synthetic_scores(n, seed=n)
    thresholds = np.linspace(-1, 1, 41)
    got = ten_fold_accuracy(scores, issame, thresholds)
    expected = _brute_force(scores, issame, thresholds)
    np.testing.assert_array_equal(got["accuracies"], expected)
    assert got["mean"] == pytest.approx(expected.mean()) and got["std"] == pytest.approx(
        expected.std())
    assert 0.7 < got["mean"] < 0.95  # the synthetic sets are separable but not perfectly


def test_ten_fold_on_cosines_matches_insightface_distances():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(1200, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    issame = rng.random(600) < 0.5
    e[1::2][issame] = e[0::2][issame] + 0.4 * rng.normal(size=(issame.sum(), 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cos = (e[0::2] * e[1::2]).sum(1)
    # insightface eval/verification.py: squared distance, thresholds arange(0, 4, 0.01),
    # "same" if dist < threshold, best threshold by argmax of train accuracy.
    dist = ((e[0::2] - e[1::2]) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01)
    accs = []
    for train, test in KFold(n_splits=10, shuffle=False).split(dist):
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        accs.append(np.mean((dist[test] < t) == issame[test]))
    got = ten_fold_accuracy(cos, issame)
    assert len(COSINE_THRESHOLDS) == 400
    np.testing.assert_allclose(got["accuracies"], accs)


def test_tar_at_far_by_hand():
    impostor = np.arange(1000) / 1000.0          # 0.000 ... 0.999
    genuine = np.array([0.9985, 0.999, 0.9995, 0.5])
    scores = np.concatenate([impostor, genuine])
    issame = np.r_[np.zeros(1000, bool), np.ones(4, bool)]
    r = tar_at_far(scores, issame, far=1e-3)
    # One impostor (0.999) may pass: the threshold is the second highest impostor, 0.998.
    assert r["threshold"] == pytest.approx(0.998)
    assert r["far"] == pytest.approx(1e-3)
    assert r["tar"] == pytest.approx(3 / 4)


def test_rank_models_by_mean_and_borda():
    table = {"a": {"lfw": 0.99, "cfp": 0.80, "agedb": 0.90},
             "b": {"lfw": 0.98, "cfp": 0.95, "agedb": 0.90},
             "c": {"lfw": 0.97, "cfp": 0.85, "agedb": 0.91}}
    rows = {r["model"]: r for r in rank_models(table)}
    # lfw: a 2, b 1, c 0; cfp: b 2, c 1, a 0; agedb: c 2, a and b tie at 0.5 each.
    assert rows["a"]["borda"] == 2.5 and rows["b"]["borda"] == 3.5 and rows["c"]["borda"] == 3.0
    assert [rows[m]["rank_borda"] for m in "abc"] == [3, 1, 2]
    assert rows["b"]["mean"] == pytest.approx((0.98 + 0.95 + 0.90) / 3)
    assert [rows[m]["rank_mean"] for m in "abc"] == [3, 1, 2]
    with pytest.raises(ValueError, match="no result"):
        rank_models({"a": {"lfw": 1.0}, "b": {"cfp": 1.0}})


def _images(k, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(k)]


def test_bin_round_trip(tmp_path):
    images = _images(6)
    path = tmp_path / "set.bin"
    bins.write(path, list(zip(images[0::2], images[1::2], strict=True)), [True, False, True])
    encoded, issame = bins.read(path)
    assert issame.tolist() == [True, False, True] and len(encoded) == 6
    decoded = bins.decode(encoded, 24)
    np.testing.assert_array_equal(decoded, np.stack(images))  # PNG is lossless
    assert bins.decode(encoded, 16).shape == (6, 16, 16, 3)
    # The file is what insightface's loader expects: a pickle of (list of bytes, bools).
    with open(path, "rb") as f:
        raw_bins, raw_issame = pickle.load(f, encoding="bytes")
    assert isinstance(raw_bins[0], bytes) and raw_issame == [True, False, True]


def test_bin_written_by_python3_protocol_2_is_read(tmp_path):
    blob = [bins.encode(im) for im in _images(2)]
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps((blob, [False]), protocol=2))  # bytes via _codecs.encode
    encoded, issame = bins.read(path)
    assert encoded == blob and issame.tolist() == [False]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_bin_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Exploit(marker)], [True])))
    with pytest.raises(InputError, match="not allowed"):
        bins.read(path)
    assert not marker.exists()
    # A numpy array inside is a global too: refused.
    path.write_bytes(pickle.dumps(([np.zeros(3)], [True])))
    with pytest.raises(InputError, match="not allowed"):
        bins.read(path)


@pytest.mark.parametrize("content, words", [
    (b"garbage", "not a .bin pickle"),
    (pickle.dumps([b"x", b"y", b"z"]), "does not hold"),
    (pickle.dumps(([b"x", b"y", b"z"], [True])), "expected exactly 2 per pair"),
    (pickle.dumps((["x", "y"], [True])), "list of encoded images"),
    (pickle.dumps(([b"x", b"y"], ["yes"])), "list of booleans"),
])
def test_malformed_bins_are_refused(tmp_path, content, words):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        bins.read(path)


def test_undecodable_image_in_bin_is_refused(tmp_path):
    path = tmp_path / "bad.bin"
    good = bins.encode(_images(1)[0])
    path.write_bytes(pickle.dumps(([b"not an image", good], [True])))
    with pytest.raises(InputError, match="image 0 cannot be decoded"):  # its header
        bins.read(path)
    with pytest.raises(InputError, match="image 0 cannot be decoded"):
        bins.decode([b"not an image", good], 16, path)
    # A sound header over truncated data: refused when decoded.
    path.write_bytes(pickle.dumps(([good, good[:60]], [True])))
    encoded, _ = bins.read(path)
    with pytest.raises(InputError, match="image 1 cannot be decoded"):
        bins.decode(encoded, 16, path)


def test_jpeg_bins_decode():
    blob = bins.encode(Image.new("RGB", (20, 20), (200, 10, 10)), fmt="jpg")
    assert Image.open(io.BytesIO(blob)).format == "JPEG"
    pixel = bins.decode([blob], 20)[0, 10, 10]
    assert abs(int(pixel[0]) - 200) < 8 and int(pixel[1]) < 20
