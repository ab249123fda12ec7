"""`python -m bridges.gallery` on tiny random generators in the published LDM and DDPM
layouts: per-image noise streams, kill and resume, two processes, bad input, and the
gallery it makes through bridges.embed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bridges import demo_models, embed, gallery, unconditional
from tests.conftest import REPO, cli_env

N = 10
KINDS = ("ldm", "ddpm")


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    root = tmp_path_factory.mktemp("generators")
    return {"ldm": demo_models.ldm(root / "ldm"), "ddpm": demo_models.ddpm(root / "ddpm")}


def _args(generator, out, *extra):
    return ["gallery", f"--generator={generator}", f"--out_dir={out}", f"--num_images={N}",
            "--batch_size=4", "--steps=3", "--threads=1", "--progress=false", *extra]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def reference(generators, tmp_path_factory):
    """One complete run per layout: the bits every other run must reproduce."""
    runs = {}
    for kind in KINDS:
        out = tmp_path_factory.mktemp(f"reference_{kind}") / "faces"
        assert gallery.main(_args(generators[kind], out)) == 0
        runs[kind] = out
    return runs


def test_demo_generators_are_the_published_layouts(generators):
    """LDM: model_index.json with unet/, vqvae/, scheduler/ subfolders; DDPM: flat, as the
    published google/ddpm-celebahq-256 (no subfolders); .bin weights as published."""
    ldm, ddpm = generators["ldm"], generators["ddpm"]
    for rel in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
                "vqvae/config.json", "vqvae/diffusion_pytorch_model.bin",
                "scheduler/scheduler_config.json"):
        assert (ldm / rel).is_file(), rel
    assert sorted(p.name for p in ddpm.iterdir()) == [
        "config.json", "diffusion_pytorch_model.bin", "model_index.json",
        "scheduler_config.json"]
    assert json.loads((ddpm / "model_index.json").read_text())["scheduler"] == [
        "diffusers", "DDPMScheduler"]
    assert unconditional.check_layout(ldm) == "LDMPipeline"
    assert unconditional.check_layout(ddpm) == "DDPMPipeline"


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_manifest_and_report(kind, generators, reference):
    import hashlib

    from PIL import Image

    out = reference[kind]
    assert sorted(_pngs(out)) == [f"{n:06d}.png" for n in range(N)]
    size = 32 if kind == "ldm" else 16
    with Image.open(out / "000003.png") as im:
        assert im.size == (size, size) and im.mode == "RGB"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(N))
    for r in rows:
        assert r["sha256"] == hashlib.sha256((out / r["path"]).read_bytes()).hexdigest()
        assert r["seed"] == unconditional.image_seed(0, r["index"])
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == {"ldm": "LDMPipeline", "ddpm": "DDPMPipeline"}[kind]
    assert report["images_in_range"] == N and report["written_this_run"] == N
    assert report["generation"]["denoiser_batch"] == 1 and report["images_per_second"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_each_image_has_its_own_noise_stream(kind, generators, reference):
    """Image n drawn alone (batch of one, generator seeded with image_seed(0, n)) is image n
    of the reference run, bit for bit: its starting noise and, for DDPM, every step's noise
    come from its own stream, and the run draws it alone too. Images differ from each other."""
    from PIL import Image

    pipe = unconditional.load(generators[kind])
    for n in (0, 5, 9):
        alone = unconditional.draw(pipe, [unconditional.image_seed(0, n)], steps=3)[0]
        with Image.open(reference[kind] / f"{n:06d}.png") as im:
            batched = np.asarray(im, np.int16)
        np.testing.assert_array_equal(batched, alone, err_msg=str(n))
    with Image.open(reference[kind] / "000001.png") as a, \
            Image.open(reference[kind] / "000002.png") as b:
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 1.0


def test_our_draw_is_the_diffusers_pipeline_with_one_generator_per_image(generators):
    from diffusers import DDPMPipeline

    pipe = unconditional.load(generators["ddpm"])
    seeds = [unconditional.image_seed(3, n) for n in range(3)]
    ours = unconditional.draw(pipe, seeds, steps=4)
    fresh = DDPMPipeline.from_pretrained(str(generators["ddpm"]))
    fresh.set_progress_bar_config(disable=True)
    theirs = fresh(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in seeds],
                   num_inference_steps=4, output_type="pil").images
    np.testing.assert_array_equal(ours, np.stack([np.asarray(im) for im in theirs]))


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_never_changes_an_image_and_a_resume_may_change_it(
        kind, generators, reference, tmp_path):
    """--batch_size=1 and 5 write the reference run's (4) images and manifest byte for byte:
    the denoiser draws each image alone. A run stopped after one tile resumes with another
    --batch_size to the same bytes."""
    import shutil

    for b in (1, 5):
        out = tmp_path / f"b{b}"
        assert gallery.main(_args(generators[kind], out, f"--batch_size={b}")) == 0
        assert _pngs(out) == _pngs(reference[kind])
        assert (out / "manifest.jsonl").read_bytes() == \
            (reference[kind] / "manifest.jsonl").read_bytes()
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "b5", part)
    for png in sorted(part.glob("*.png"))[5:]:
        png.unlink()
    assert gallery.main(_args(generators[kind], part, "--batch_size=3")) == 0
    assert _pngs(part) == _pngs(reference[kind])
    report = json.loads((part / "report.json").read_text())
    assert report["skipped_existing"] == 5 and report["written_this_run"] == N - 5


@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_is_bitwise_identical(kind, generators, reference, tmp_path):
    """kill -9 as soon as a random number of images is on disk; the re-run draws
    only the rest, and images and manifest are byte for byte the reference run's."""
    out = tmp_path / "killed"
    args = _args(generators[kind], out)[1:]
    # Any image before the last tile (4 + 4 + 2 images): waiting for one of the last tile
    # would wait for the end of the run.
    stop_at = int(np.random.default_rng().integers(1, N - 2))
    proc = subprocess.Popen([sys.executable, "-m", "bridges.gallery", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < stop_at \
            and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(out.glob("*.png"))
    assert 1 <= len(first) < N, f"not killed part-way ({len(first)} images, aimed {stop_at})"
    assert gallery.main(["gallery", *args]) == 0
    assert not list(out.glob(".*.tmp"))
    assert _pngs(out) == _pngs(reference[kind])
    assert (out / "manifest.jsonl").read_bytes() == \
        (reference[kind] / "manifest.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_existing"] == len(first)
    assert report["written_this_run"] == N - len(first)


def test_damaged_images_are_redrawn_and_more_images_keep_the_earlier_ones(
        generators, reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference["ldm"], out)
    shutil.copyfile(out / "000007.png", out / "000002.png")  # valid PNG, wrong bytes
    truncated = out / "000008.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert gallery.main(_args(generators["ldm"], out, f"--num_images={N + 3}")) == 0
    err = capsys.readouterr().err
    assert "redrawing 2 damaged images" in err
    # The re-run says it resumes: what it found intact, what is left.
    assert f"resuming in {out}: {N - 2} of {N + 3} images already there and intact, 5 left " \
        "to draw" in err
    now = _pngs(out)
    assert {k: now[k] for k in _pngs(reference["ldm"])} == _pngs(reference["ldm"])
    assert len(now) == N + 3
    report = json.loads((out / "report.json").read_text())
    assert report["written_this_run"] == 5 and report["skipped_existing"] == N - 2


@pytest.mark.parametrize("kind", KINDS)
def test_two_torchrun_processes_write_the_same_files_as_one(kind, generators, reference,
                                                            tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "two"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={port}", "-m", "bridges.gallery",
         *_args(generators[kind], out)[1:]],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 1/2" in r.stderr and "process 0/2" in r.stderr
    assert _pngs(out) == _pngs(reference[kind])
    assert (out / "manifest.jsonl").read_bytes() == \
        (reference[kind] / "manifest.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    assert sorted(c["written"] for c in report["per_process"]) == [4, 6]  # tiles 0,2 / 1


# ----------------------------------------------------------------------------- bad input

def _bad_cases(generators, tmp: Path):
    import shutil

    (tmp / "empty").mkdir()
    (tmp / "stylegan").mkdir()
    (tmp / "stylegan" / "ffhq.pkl").write_bytes(b"\x80\x04N.")
    no_vq = tmp / "no_vq"
    shutil.copytree(generators["ldm"], no_vq)
    (no_vq / "vqvae" / "config.json").unlink()
    no_weights = tmp / "no_weights"
    shutil.copytree(generators["ddpm"], no_weights)
    (no_weights / "diffusion_pytorch_model.bin").unlink()
    sd = tmp / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    broken = tmp / "broken"
    shutil.copytree(generators["ldm"], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:500])
    (tmp / "a_file").write_text("not a folder")
    ldm = generators["ldm"]
    return [
        ([f"--generator={tmp / 'nowhere'}"], "--generator folder not found"),
        ([f"--generator={tmp / 'empty'}"], "is not a diffusers generator folder"),
        ([f"--generator={tmp / 'stylegan'}"], "StyleGAN pickle"),
        ([f"--generator={no_vq}"], "vqvae/config.json is missing"),
        ([f"--generator={no_weights}"], "has no weights"),
        ([f"--generator={sd}"], "holds a StableDiffusionPipeline"),
        ([f"--generator={broken}"], "cannot load the LDMPipeline"),
        (["--num_images=0"], "num_images"),
        (["--steps=0"], "steps"),
        (["--generator="], "--generator is required"),
        ([f"--generator={ldm}", f"--out_dir={tmp / 'a_file' / 'sub'}"], "a_file"),
        ([f"--generator={ldm}", "--out_dir=/proc/faces"], "/proc/faces"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(generators, tmp_path, capsys):
    cases = _bad_cases(generators, tmp_path)
    for extra, words in cases:
        out = tmp_path / "out"
        code = gallery.main(_args(generators["ldm"], out) + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, extra
        assert len(err) == 1 and words in err[0], (extra, err)
        assert not out.exists(), extra
    missing = [a for a in _args(generators["ldm"], tmp_path / "out")
               if not a.startswith("--num_images")]
    assert gallery.main(missing) == 2
    assert "--num_images is required" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- to a gallery

def test_sixteen_ldm_images_embed_to_a_gallery_with_the_faceless_listed_and_dropped(
        generators, tmp_path):
    """The whole first stage without a photo: 16 drawn images, then bridges.embed (detect,
    align, embed); the detector (a tiny SCRFD that "sees a face" where the image is bright
    enough) misses some, which are listed, counted and left out of the gallery."""
    import cv2

    from bridges import faces

    out = tmp_path / "faces"
    assert gallery.main(_args(generators["ldm"], out, "--num_images=16")) == 0
    det = demo_models.detector(tmp_path / "det.onnx", level=0.18)
    rec = demo_models.recognizer(tmp_path / "rec.onnx")
    assert embed.main(["embed", f"--images={out}", f"--detector={det}", f"--recognizer={rec}",
                       f"--out={tmp_path / 'gallery.npy'}", "--progress=false"]) == 0
    detector = faces.load_detector(det)
    found = [f"{n:06d}.png" for n in range(16)
             if faces.align_largest(detector, cv2.imread(str(out / f"{n:06d}.png"))) is not None]
    assert 0 < len(found) < 16, "both branches must be exercised"
    listing = json.loads((tmp_path / "gallery.json").read_text())
    assert listing["rows"] == found
    assert sorted(s["path"] for s in listing["skipped"]) == sorted(
        set(f"{n:06d}.png" for n in range(16)) - set(found))
    assert listing["counts"] == {"images": 16, "embedded": len(found),
                                 "no_face": 16 - len(found), "unreadable": 0, "wrong_size": 0}
    g = np.load(tmp_path / "gallery.npy")
    assert g.shape == (len(found), 512)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)


def test_a_generator_that_draws_no_face_gives_one_line_and_no_gallery(generators, tmp_path,
                                                                      capsys):
    out = tmp_path / "faces"
    assert gallery.main(_args(generators["ddpm"], out)) == 0
    det = demo_models.detector(tmp_path / "det.onnx", level=0.99)  # sees nothing
    rec = demo_models.recognizer(tmp_path / "rec.onnx")
    capsys.readouterr()
    assert embed.main(["embed", f"--images={out}", f"--detector={det}", f"--recognizer={rec}",
                       f"--out={tmp_path / 'g.npy'}", "--progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no face could be embedded" in err[0]
    assert not list(tmp_path.glob("g*"))
