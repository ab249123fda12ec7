"""HyperFace appendix D, closed: generate -> embed -> analyze -> train on the cleaned set,
on tiny models. Copies of "real" reference images (scikit-learn digits) are planted in
the generated set; the drop list must name exactly them, and `bridges.train --exclude`
must train without them. `--exclude` on its own: forms of paths, bad lists."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridges import embed, generate, train
from tests import bridges_models
from tests.conftest import run_module
from tests.test_recognition_train import TINY, make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = [*TINY[:-2], "--batch_size=4", "--lr_steps=", "--epochs=1", "--max_steps=2"]


def _real_set(root: Path) -> Path:
    """Two "real" identities (digit classes), two 112 x 112 images each."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1):
        (root / f"person_{label}").mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.target == label)[:2]):
            Image.fromarray((digits.images[i] * 15.9).astype(np.uint8)).resize(
                (112, 112), Image.BILINEAR).convert("RGB").save(root / f"person_{label}" /
                                                                f"{k}.png")
    return root


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Generated set (3 identities x 2 aligned images) with 2 planted real images, both
    embedded; returns paths and the planted files."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("loop")
    try:
        base = bridges_models.base_model(root / "sd15")
        a2f = bridges_models.arc2face(root / "arc2face")
        rec = bridges_models.recognizer(root / "recognizer.onnx")
        det = bridges_models.detector(root / "det.onnx", level=-2.0)  # a face everywhere
        refs = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
        np.save(root / "refs.npy", refs / np.linalg.norm(refs, axis=1, keepdims=True))
        data = root / "dataset"
        assert generate.main([
            "generate", f"--references={root / 'refs.npy'}", f"--arc2face={a2f}",
            f"--base_model={base}", f"--out_dir={data}", "--images_per_identity=2",
            "--micro_batch=2", "--steps=1", "--threads=1", "--progress=false", "--align",
            f"--detector={det}"]) == 0
        real = _real_set(root / "real")
        planted = [data / "000001" / "900.png", data / "000002" / "901.png"]
        shutil.copy(real / "person_0" / "1.png", planted[0])
        shutil.copy(real / "person_1" / "0.png", planted[1])
        for images, out in ((real, root / "real.npy"), (data, root / "gen.npy")):
            assert embed.main(["embed", f"--images={images}", "--aligned", f"--recognizer={rec}",
                               f"--out={out}", "--progress=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "planted": planted}


def _resolve(line: str, images: Path) -> Path:
    """A drop-list line as a file: absolute, relative to the embedded folder, or to cwd."""
    path = Path(line)
    if not path.is_absolute():
        path = images / line if (images / line).exists() else Path(os.getcwd()) / line
    return Path(os.path.realpath(path))


def test_the_planted_copies_are_the_images_closest_to_the_reference(loop):
    root = loop["root"]
    listing = json.loads((root / "gen.json").read_text())
    gen, real = np.load(root / "gen.npy"), np.load(root / "real.npy")
    labels = np.load(root / "gen_labels.npy")
    assert len(listing["rows"]) == 8 and not listing["skipped"]
    assert listing["identities"] == ["000000", "000001", "000002"]
    assert labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    best = (gen @ real.T).max(axis=1)
    top2 = np.argsort(-best, kind="stable")[:2]
    files = {_resolve(listing["rows"][r], Path(listing["images"])) for r in top2}
    assert files == {Path(os.path.realpath(p)) for p in loop["planted"]}
    assert best[top2].min() > 1 - 1e-5 > np.sort(best)[-3]  # copies: cos 1, the rest below


def test_training_on_the_cleaned_set_leaves_the_planted_files_out(loop, tmp_path):
    drop = tmp_path / "drop.txt"
    rows = json.loads((loop["root"] / "gen.json").read_text())["rows"]
    planted = [p.relative_to(loop["data"]).as_posix() for p in loop["planted"]]
    assert set(planted) <= set(rows)
    drop.write_text(f"{planted[0]}\n{loop['planted'][1]}\n")  # relative and absolute
    out = tmp_path / "run"
    assert train.main(["train", f"--data={loop['data']}", f"--exclude={drop}",
                       f"--out_dir={out}", *TRAIN]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 6 and report["num_classes"] == 3
    assert sorted(map(os.path.realpath, report["excluded_images"])) == sorted(
        os.path.realpath(p) for p in loop["planted"])


def test_generate_embed_analyze_train_loop(loop, tmp_path):
    root = loop["root"]
    result = run_module(
        "hyperface_jax.analyze", f"--embeddings={root / 'gen.npy'}",
        f"--labels={root / 'gen_labels.npy'}", f"--reference={root / 'real.npy'}",
        f"--reference_labels={root / 'real_labels.npy'}", "--clean_top_k=2",
        f"--files={root / 'gen.json'}", f"--out_dir={tmp_path / 'analysis'}",
        "--progress=false", timeout=300)
    assert result.returncode == 0, result.stderr
    drop = tmp_path / "analysis" / "drop.txt"
    images = Path(json.loads((root / "gen.json").read_text())["images"])
    lines = [ln for ln in drop.read_text().splitlines() if ln.strip()]
    assert {_resolve(ln, images) for ln in lines} == {
        Path(os.path.realpath(p)) for p in loop["planted"]}
    out = tmp_path / "run"
    assert train.main(["train", f"--data={loop['data']}", f"--exclude={drop}",
                       f"--out_dir={out}", *TRAIN]) == 0
    assert json.loads((out / "report.json").read_text())["num_images"] == 6


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("small") / "data", identities=3,
                        per_identity=4, size=16)


def test_exclude_accepts_relative_and_absolute_paths_and_drops_empty_identities(
        small_set, tmp_path, monkeypatch):
    drop = tmp_path / "drop.txt"
    whole = sorted(p.relative_to(small_set).as_posix() for p in (small_set / "000001").iterdir())
    monkeypatch.chdir(small_set.parent)
    drop.write_text("# images of identity 1, in every form\n\n"
                    f"{whole[0]}\n{small_set / whole[1]}\ndata/{whole[2]}\n  {whole[3]}  \n"
                    "000002/001.png\n")
    out = tmp_path / "run"
    assert train.main(["train", f"--data={small_set}", f"--exclude={drop}",
                       f"--out_dir={out}", *TRAIN]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 7 and report["num_classes"] == 2
    assert len(report["excluded_images"]) == 5


def test_bad_exclude_lists_exit_2_with_one_line(small_set, tmp_path, capsys):
    (tmp_path / "outside.png").write_bytes(b"")
    cases = {
        "missing.txt": (None, "--exclude list not found"),
        "binary.txt": (b"\xff\xfe\x00bad", "cannot be read"),
        "unknown.txt": (b"000000/000.png\nnot/there.png\n",
                        "line 2: not/there.png is not an image of the training set"),
        "outside.txt": (f"{tmp_path / 'outside.png'}\n".encode(), "outside.png is not an image"),
        "all.txt": ("".join(f"{p}\n" for p in sorted(small_set.rglob("*.png"))
                            if p.parent.name != "000000").encode(), "leaves 1 identities"),
    }
    for name, (content, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        out = tmp_path / f"run_{name}"
        code = train.main(["train", f"--data={small_set}", f"--exclude={tmp_path / name}",
                           f"--out_dir={out}", *TRAIN])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and words in err[0], (name, err)
        assert not out.exists(), name
