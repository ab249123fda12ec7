"""bridges.evaluate and bridges.train on hostile or odd input: model specs, pickle memo
bombs, --names, --threads, and nothing left behind by a bad image."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bridges import bins, evaluate, train
from bridges.recognition.model import FaceModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = {"arch": "ir18", "width": 4, "embedding_size": 8, "input_size": 16, "dropout": 0.0,
        "head": "adaface", "groups": 4, "group_aggregation": "soft"}


def _save_model(path, spec=SPEC, seed=0, state_spec=None):
    torch.manual_seed(seed)
    model = FaceModel(state_spec or SPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": spec, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bins")
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (16, 16, 3)), rng.integers(0, 256, (16, 16, 3)))
             for _ in range(10)]
    bins.write(root / "tiny.bin", pairs, [k % 2 == 0 for k in range(10)])
    return root


def _evaluate(*args):
    return evaluate.main(["evaluate", "--progress=false", *map(str, args)])


@pytest.mark.parametrize("change, words", [
    ({"arch": "ir999"}, "unknown architecture 'ir999'"),
    ({"head": "sphereface"}, "unknown head 'sphereface'"),
    ({"input_size": 20}, "input_size must be a multiple of 16"),
    ({"input_size": 1 << 20}, "input_size must be a multiple of 16"),
    ({"width": 10**9}, "width and embedding_size"),
    ({"dropout": "x"}, "dropout"),
    ({"head": "groupface", "groups": 1}, "groups in [2, 4096]"),
    ({"arch": None}, "unknown architecture None"),
])
def test_a_bad_spec_is_one_line_naming_the_problem(tmp_path, bin_dir, capsys, change, words):
    model = _save_model(tmp_path / "m" / "model.pt", spec={**SPEC, **change})
    out = tmp_path / "out"
    assert _evaluate(f"--model={model}", f"--bins={bin_dir}", f"--out_dir={out}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: model file {model}: "), err
    assert words in err[0]
    assert not out.exists()


def test_a_spec_lacking_keys_names_them(tmp_path, bin_dir, capsys):
    spec = {k: v for k, v in SPEC.items() if k not in ("width", "head")}
    model = _save_model(tmp_path / "model.pt", spec=spec)
    assert _evaluate(f"--model={model}", f"--bins={bin_dir}", f"--out_dir={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: model file {model}: spec lacks width, head"]


def test_a_spec_that_does_not_fit_its_weights_is_one_line(tmp_path, bin_dir, capsys):
    model = _save_model(tmp_path / "model.pt", spec={**SPEC, "embedding_size": 12})
    assert _evaluate(f"--model={model}", f"--bins={bin_dir}", f"--out_dir={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit the stored spec" in err[0]


def _memo_bomb(path, images: int):
    """A pickle whose image list refers `images` times to ONE encoded image (what pickle
    writes for a list holding the same bytes object repeatedly): tiny on disk."""
    one = bins.encode(np.zeros((16, 16, 3), np.uint8))
    blob = pickle.dumps(([one] * images, [True] * (images // 2)), protocol=4)
    path.write_bytes(blob)
    return len(blob)


def test_a_pickle_memo_bomb_is_bounded_and_says_so(tmp_path, capsys):
    (tmp_path / "bins").mkdir()
    size = _memo_bomb(tmp_path / "bins" / "bomb.bin", 200_000)
    assert size < 600_000  # 200,000 images in about 500 KB
    model = _save_model(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert _evaluate(f"--model={model}", f"--bins={tmp_path / 'bins'}", f"--out_dir={out}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 200000 images, only 1 distinct" in err[0]
    assert "bound of 100000 per set (--max_images raises it)" in err[0]
    assert not out.exists()
    # Below the bound the same file is read (it is a valid, if repetitive, set).
    encoded, issame = bins.read(tmp_path / "bins" / "bomb.bin", max_images=200_000)
    assert len(encoded) == 200_000 and issame.all()


def _png(width, height, mode="RGB") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bin_of_references_to_one_huge_png_is_refused_within_seconds(tmp_path, capsys):
    """The tester's file: 100,000 memo references to one 4096 x 4096 PNG (~300 KB; each
    decode ~0.5 s, about 13 hours in all) passes the image count and per-image bounds; the
    pixels its headers declare in all exceed the budget of its file size."""
    import time

    (tmp_path / "bins").mkdir()
    blob = pickle.dumps(([_png(4096, 4096)] * 100_000, [True] * 50_000), protocol=4)
    (tmp_path / "bins" / "bomb.bin").write_bytes(blob)
    assert len(blob) < 320_000
    model = _save_model(tmp_path / "model.pt")
    out = tmp_path / "out"
    started = time.perf_counter()
    assert _evaluate(f"--model={model}", f"--bins={tmp_path / 'bins'}", f"--out_dir={out}") == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (f"its 100000 images (1 distinct: the pickle repeats references) declare "
            f"{100_000 * 4096 * 4096:,} pixels, above its decoding budget of "
            f"{1000 * len(blob):,}") in err[0]
    assert not out.exists()


def test_the_pixel_budget_counts_every_reference_against_the_file_size(tmp_path):
    one = _png(4096, 4096, mode="1")  # 2 KB: the budget is the floor, 2^26 = 4 images
    assert bins.pixel_budget(len(one) * 5) == bins.MIN_PIXEL_BUDGET == 4 * 4096 * 4096
    assert bins.pixel_budget(10**6) == 10**9
    assert bins.pixel_budget(10**12) == bins.MAX_SET_PIXELS
    for images in (4, 6):  # 4 images fill the floor exactly; 6 exceed it
        path = tmp_path / f"{images}.bin"
        path.write_bytes(pickle.dumps(([one] * images, [True] * (images // 2)), protocol=4))
        if images == 4:
            assert len(bins.read(path)[0]) == 4
        else:
            with pytest.raises(bins.InputError, match=r"its 6 images \(1 distinct: the pickle "
                               r"repeats references\) declare 100,663,296 pixels"):
                bins.read(path)
    # Distinct objects with the same bytes are counted as often (their bytes are stored).
    small = [_png(64, 64) for _ in range(6)]
    path = tmp_path / "fine.bin"
    path.write_bytes(pickle.dumps((small, [True] * 3), protocol=4))
    assert bins.check_pixel_budget(bins.read(path)[0], path, 6 * 64 * 64) == 6 * 64 * 64
    with pytest.raises(bins.InputError, match="its 6 images declare 24,576 pixels"):
        bins.check_pixel_budget(small, path, 6 * 64 * 64 - 1)


def test_decoded_size_and_image_pixels_are_bounded():
    one = bins.encode(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(bins.InputError, match=r"need 3\.0 GiB decoded, above the bound of 1"):
        bins.decode([one] * 4, 16384, "x.bin", max_bytes=1 << 30)  # 4 x 16384^2 x 3 bytes
    import io

    big = io.BytesIO()
    Image.new("1", (5000, 4000)).save(big, format="PNG")  # 1 bit per pixel: quick to encode
    with pytest.raises(bins.InputError, match="image 1 is 5000 x 4000 pixels, above the bound"):
        bins.decode([one, big.getvalue()], 16, "x.bin")


def test_names_label_results_and_the_roc_legend(tmp_path, bin_dir, monkeypatch):
    a = _save_model(tmp_path / "runs" / "train" / "model.pt", seed=1)
    b = _save_model(tmp_path / "other" / "train" / "model.pt", seed=2)
    legend = {}
    from bridges.recognition import plots

    monkeypatch.setattr(plots, "roc_curves", lambda curves, path, title="": legend.update(
        labels=list(curves)))
    out = tmp_path / "out"
    assert _evaluate(f"--models={a},{b}", "--names=HyperFace 10k,DiffFR",
                     f"--bins={bin_dir}", f"--out_dir={out}", "--threads=1") == 0
    report = json.loads((out / "results.json").read_text())
    assert report["models"] == {"HyperFace 10k": str(a), "DiffFR": str(b)}
    assert list(report["results"]) == ["HyperFace 10k", "DiffFR"]
    assert report["torch_threads"] == 1
    md = (out / "results.md").read_text()
    assert "| HyperFace 10k |" in md and "| DiffFR |" in md and "train_2" not in md
    assert legend["labels"] == ["HyperFace 10k / tiny", "DiffFR / tiny"]
    # Without --names: the run folders' names, made unique.
    assert evaluate.model_names([str(a), str(b)]) == {"train": str(a), "train_2": str(b)}


@pytest.mark.parametrize("names, words", [
    ("one", "--names has 1 names for 2 models"),
    ("x,x", "--names repeats a name"),
    ("x,", "empty name"),
    ("a|b,c", "'|'"),
])
def test_bad_names_are_refused(tmp_path, bin_dir, capsys, names, words):
    a = _save_model(tmp_path / "a" / "model.pt")
    b = _save_model(tmp_path / "b" / "model.pt")
    code = _evaluate(f"--models={a},{b}", f"--names={names}", f"--bins={bin_dir}",
                     f"--out_dir={tmp_path / 'o'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_train_leaves_nothing_behind_on_a_bad_image(tmp_path, capsys):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(2):
        (data / f"{i:06d}").mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                data / f"{i:06d}" / f"{k:03d}.png")
    (data / "000001" / "002.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "runs" / "fr"
    code = train.main(["train", f"--data={data}", f"--out_dir={out}", "--arch=ir18",
                       "--width=4", "--input_size=16", "--embedding_size=8", "--batch_size=8",
                       "--workers=0", "--threads=1", "--progress=false"])
    assert code == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_device_or_fifo_is_named_as_such_not_as_missing(tmp_path, bin_dir, capsys):
    import os

    model = _save_model(tmp_path / "m" / "model.pt")
    (tmp_path / "folder.bin").mkdir()
    os.mkfifo(tmp_path / "fifo.bin")
    cases = [
        (["--model=/dev/zero", f"--bins={bin_dir}"],
         "model file /dev/zero is a FIFO, device or socket, not a file"),
        ([f"--model={model}", f"--bins={bin_dir / 'tiny.bin'},{tmp_path / 'folder.bin'}"],
         f"verification file {tmp_path / 'folder.bin'} is a folder, not a file"),
        ([f"--model={model}", f"--bins={bin_dir / 'tiny.bin'},{tmp_path / 'fifo.bin'}"],
         f"verification file {tmp_path / 'fifo.bin'} is a FIFO, device or socket, not a file"),
        ([f"--model={model}", f"--bins={tmp_path / 'gone.bin'},{bin_dir / 'tiny.bin'}"],
         f"verification file not found: {tmp_path / 'gone.bin'}"),
    ]
    for flags, words in cases:
        assert _evaluate(*flags, f"--out_dir={tmp_path / 'o'}") == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {words}"], flags
    with pytest.raises(bins.InputError, match="is a folder, not a file"):
        bins.read(tmp_path / "folder.bin")
    data = tmp_path / "data.txt"
    data.write_text("x")
    code = train.main(["train", f"--data={data}", f"--out_dir={tmp_path / 'run'}",
                       "--progress=false"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: training data folder {data} is a file, not a folder")
