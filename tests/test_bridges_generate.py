"""bridges.arc2face and `python -m bridges.generate` on tiny random models in the published
layouts: conditioning, Eq. 3, determinism (batch size, identity ranges, kill and resume,
two processes), outputs and bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bridges import arc2face, generate
from bridges import demo_models as bridges_models
from hyperface_jax import cli
from tests.conftest import REPO, cli_env

BETA = 0.005


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The CLIs run with --threads=1; the in-process model checks do the same (bits are
    reproducible at a fixed thread count), and the shared machine is not oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    demo = bridges_models.build(root / "demo")  # the models `bridges.demo_models` builds
    base, a2f, rec = demo["base_model"], demo["arc2face"], Path(demo["recognizer"])
    # Brightness level tuned so that some of the tiny UNet's images hold a "face", some not.
    det = bridges_models.detector(root / "det.onnx", level=0.1)
    refs = np.random.default_rng(0).normal(size=(5, 512)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    np.save(root / "refs.npy", refs)
    return {"base": base, "arc2face": a2f, "recognizer": rec, "detector": det,
            "refs": root / "refs.npy", "root": root, "demo": demo}


@pytest.fixture(scope="module")
def model(models):
    return arc2face.load(models["arc2face"], models["base"])


def _args(models, out, *extra):
    return ["generate", f"--references={models['refs']}", f"--arc2face={models['arc2face']}",
            f"--base_model={models['base']}", f"--out_dir={out}", "--images_per_identity=3",
            "--micro_batch=2", "--steps=2", "--threads=1", "--progress=false", *extra]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))
            if p.parent.name.isdigit()}


@pytest.fixture(scope="module")
def reference_run(models, tmp_path_factory):
    """One complete run with --batch_size=1: the bits every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "dataset"
    assert generate.main(_args(models, out, "--batch_size=1",
                               f"--recognizer={models['recognizer']}")) == 0
    return out


# ----------------------------------------------------------------------------- conditioning

def test_id_token_replacement_changes_prompt_embeds_only_from_the_id_position(model):
    x = np.random.default_rng(1).normal(size=(2, 512))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pe = arc2face.prompt_embeds(model, x.astype(np.float32))
    assert pe.shape == (2, bridges_models.MAX_LENGTH, bridges_models.WIDTH)
    id_pos = int((model.prompt_ids[0] == model.id_token_id).nonzero()[0, 0])
    assert id_pos == 4  # <start> photo of a id person <end>
    change = (pe[0] - pe[1]).abs().amax(dim=-1)
    assert float(change[:id_pos].max()) == 0.0          # causal: before `id`, untouched
    assert bool((change[id_pos:] > 1e-4).all())         # from `id` on, every position moves


def test_hook_with_the_tokens_own_embedding_reproduces_the_plain_encoder(model):
    own = model.text_encoder.get_input_embeddings().weight[model.id_token_id]
    with torch.inference_mode():
        plain = model.text_encoder(input_ids=model.prompt_ids)[0]
        with arc2face.id_token_replaced(model.text_encoder, model.id_token_id, own[None]):
            hooked = model.text_encoder(input_ids=model.prompt_ids)[0]
        other = torch.zeros_like(own)[None]
        with arc2face.id_token_replaced(model.text_encoder, model.id_token_id, other):
            zeroed = model.text_encoder(input_ids=model.prompt_ids)[0]
        after = model.text_encoder(input_ids=model.prompt_ids)[0]
    assert torch.equal(hooked, plain)
    assert not torch.equal(zeroed, plain)
    assert torch.equal(after, plain)  # the hook is removed on exit


def test_id_row_is_the_arcface_embedding_zero_padded_to_the_encoder_width(model):
    e = np.random.default_rng(4).normal(size=(1, 512)).astype(np.float32)
    e /= np.linalg.norm(e)
    seen = {}
    embeddings = model.text_encoder.embeddings  # token + position embeddings
    handle = embeddings.register_forward_hook(lambda m, i, o: seen.setdefault("h", o.clone()))
    try:
        arc2face.prompt_embeds(model, e)
    finally:
        handle.remove()
    ids = model.prompt_ids[0]
    id_pos = int((ids == model.id_token_id).nonzero()[0, 0])
    tokens = model.text_encoder.get_input_embeddings().weight[ids]
    positions = embeddings.position_embedding.weight[: len(ids)]
    expected = tokens + positions
    expected[id_pos] = positions[id_pos] + torch.nn.functional.pad(
        torch.tensor(e[0]), (0, bridges_models.WIDTH - 512))
    assert torch.allclose(seen["h"][0], expected, atol=1e-6)
    assert torch.equal(seen["h"][0, id_pos, 512:], positions[id_pos, 512:])


def test_encoder_saved_by_transformers_4_loads_with_its_weights(models, model):
    state = torch.load(Path(models["arc2face"]) / "encoder" / "pytorch_model.bin")
    assert all(k.startswith("text_model.") for k in state)
    loaded = model.text_encoder.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key.removeprefix("text_model.")], value), key
    assert json.loads((Path(models["arc2face"]) / "encoder" / "config.json").read_text())[
        "architectures"] == ["CLIPTextModelWrapper"]


def test_encoder_resaved_by_transformers_5_gives_the_same_conditioning(models, model, tmp_path):
    import shutil

    folder = tmp_path / "a2f5"
    shutil.copytree(models["arc2face"], folder, ignore=shutil.ignore_patterns("encoder"))
    model.text_encoder.save_pretrained(folder / "encoder")  # model.safetensors, no prefix
    assert (folder / "encoder" / "model.safetensors").exists()
    again = arc2face.load(folder, models["base"])
    e = np.eye(512, dtype=np.float32)[:2]
    assert torch.equal(arc2face.prompt_embeds(again, e), arc2face.prompt_embeds(model, e))


def test_our_sampling_loop_is_diffusers_stable_diffusion_pipeline(model):
    from diffusers import StableDiffusionPipeline

    x = np.random.default_rng(2).normal(size=(2, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cond = arc2face.prompt_embeds(model, x)
    z = arc2face.initial_latents(model, [11, 12])
    ours = arc2face.denoise(model, cond, z, steps=3, guidance=3.0)
    with torch.inference_mode():
        ours_img = model.vae.decode(ours / model.vae.config.scaling_factor)[0]
    ours_img = (ours_img * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        unet=model.unet, scheduler=arc2face.make_scheduler(model), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    negative = model.negative_embeds.expand(2, -1, -1)
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=negative, latents=z.clone(),
                  num_inference_steps=3, guidance_scale=3.0, output_type="np").images
    np.testing.assert_allclose(ours_img, theirs, atol=1e-5)


# ----------------------------------------------------------------------------- Eq. 3

def test_eq3_statistics_match_beta():
    rng = np.random.default_rng(3)
    x = rng.normal(size=512)
    x /= np.linalg.norm(x)
    seeds = [arc2face.image_seeds(0, 7, k)[0] for k in range(2000)]
    e = np.stack([arc2face.perturbed_embedding(x, BETA, s) for s in seeds]).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    cos = e @ x
    # E[cos] = 1 / sqrt(1 + beta^2 d) to second order for unit x and eps ~ N(0, I_d).
    expected = 1 / np.sqrt(1 + BETA**2 * 512)
    assert abs(cos.mean() - expected) < 2e-4
    # Undo the normalisation: (e / cos - x) / beta is the noise, with unit std per entry.
    eps = (e / cos[:, None] - x) / BETA
    assert abs(eps.std() - 1.0) < 0.01 and abs(eps.mean()) < 0.01
    # Each image's noise is its own: no two seeds (and so no two noises) repeat.
    assert len(set(seeds)) == len(seeds)
    assert abs(np.corrcoef(eps[0], eps[1])[0, 1]) < 0.2


def test_image_seeds_depend_on_seed_identity_and_k_only():
    assert arc2face.image_seeds(0, 1, 2) == arc2face.image_seeds(0, 1, 2)
    distinct = {arc2face.image_seeds(s, i, k) for s in (0, 1) for i in (0, 1) for k in (0, 1)}
    assert len(distinct) == 8


# ----------------------------------------------------------------------------- demo models

DEMO_FILES = [
    "weights/arc2face/arc2face/config.json",
    "weights/arc2face/arc2face/diffusion_pytorch_model.safetensors",
    "weights/arc2face/encoder/config.json", "weights/arc2face/encoder/pytorch_model.bin",
    "weights/arc2face/arcface.onnx", "weights/sd15/model_index.json",
    "weights/sd15/tokenizer/vocab.json", "weights/sd15/tokenizer/merges.txt",
    "weights/sd15/tokenizer/special_tokens_map.json",
    "weights/sd15/tokenizer/tokenizer_config.json", "weights/sd15/vae/config.json",
    "weights/sd15/vae/diffusion_pytorch_model.safetensors",
    "weights/sd15/scheduler/scheduler_config.json", "weights/buffalo_l/det_10g.onnx",
    "weights/ldm/model_index.json", "weights/ldm/unet/diffusion_pytorch_model.bin",
    "weights/ldm/vqvae/diffusion_pytorch_model.bin",
    "weights/ldm/scheduler/scheduler_config.json", "weights/ddpm/model_index.json",
    "weights/ddpm/config.json", "weights/ddpm/diffusion_pytorch_model.bin",
    "weights/ddpm/scheduler_config.json", "bins/demo.bin"]


def test_demo_models_are_the_published_layout_and_load(models, model):
    """`model` is the demo's Arc2Face loaded by arc2face.load; the ONNX models load
    through insightface's zoo as the classes the real ones route to."""
    from bridges import bins, faces

    root = Path(models["demo"]["photos"]).parent
    layout = (REPO / "third_party" / "README.md").read_text()
    for rel in DEMO_FILES:
        assert (root / rel).is_file(), rel
        if rel.startswith("weights/"):  # the same relative paths as the real weights
            assert rel.split("/", 2)[2] in layout or rel.rsplit("/", 1)[-1] in layout, rel
    assert model.image_size == 32 and model.width == bridges_models.WIDTH
    assert type(faces.load_recognizer(models["demo"]["recognizer"])).__name__ == "ArcFaceONNX"
    assert type(faces.load_detector(models["demo"]["detector"])).__name__ == "SCRFD"
    encoded, issame = bins.read(root / "bins" / "demo.bin")
    assert len(encoded) == 80 and issame.sum() == 20
    assert len(list((root / "photos").glob("person_*/*.png"))) == 24


def test_demo_models_cli_refuses_a_used_folder_and_leaves_nothing_on_failure(
        tmp_path, capsys, monkeypatch):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert bridges_models.main(["demo_models", f"--out_dir={used}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists and is not an empty folder" in err[0]
    assert [p.name for p in used.iterdir()] == ["notes.txt"]

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bridges_models, "photos", fail)  # late: after the models are built
    monkeypatch.setattr(bridges_models, "arc2face", lambda folder, **k: folder)
    monkeypatch.setattr(bridges_models, "recognizer", lambda path, **k: path)
    monkeypatch.setattr(bridges_models, "detector", lambda path, **k: path)
    with pytest.raises(RuntimeError, match="disk full"):
        bridges_models.build(tmp_path / "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


# ----------------------------------------------------------------------------- the CLI

def test_outputs_manifest_and_report(models, reference_run):
    out = reference_run
    pngs = _pngs(out)
    assert sorted(pngs) == [f"{i:06d}/{k:03d}.png" for i in range(5) for k in range(3)]
    from PIL import Image

    with Image.open(out / "000002" / "001.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["identity"], r["k"]) for r in rows] == [(i, k) for i in range(5) for k in range(3)]
    refs = np.load(models["refs"])
    import hashlib

    for r in rows:
        assert r["sha256"] == hashlib.sha256((out / r["path"]).read_bytes()).hexdigest()
        es, ls = arc2face.image_seeds(0, r["identity"], r["k"])
        assert (r["embedding_seed"], r["latent_seed"]) == (es, ls)
        e = arc2face.perturbed_embedding(refs[r["identity"]], BETA, es)
        assert abs(r["cos_to_reference"] - float(e @ refs[r["identity"]])) < 1e-6
    report = json.loads((out / "report.json").read_text())
    assert report["images_in_range"] == 15 and report["written_this_run"] == 15
    assert report["flags"]["beta"] == BETA and report["generation"]["micro_batch"] == 2
    assert report["images_per_second"] > 0
    assert abs(report["eq3_cos_to_reference"]["mean"]
               - np.mean([r["cos_to_reference"] for r in rows])) < 1e-6


def test_identity_check_matches_an_independent_onnxruntime_pass(models, reference_run):
    import cv2
    import onnxruntime

    report = json.loads((reference_run / "report.json").read_text())["identity_check"]
    session = onnxruntime.InferenceSession(str(models["recognizer"]),
                                           providers=["CPUExecutionProvider"])
    refs = np.load(models["refs"])
    cos = []
    for i in range(5):
        for k in range(3):
            bgr = cv2.imread(str(reference_run / f"{i:06d}" / f"{k:03d}.png"))
            rgb = cv2.resize(bgr, (112, 112))[:, :, ::-1].astype(np.float32)
            blob = ((rgb - 127.5) / 127.5).transpose(2, 0, 1)[None]
            f = session.run(None, {session.get_inputs()[0].name: blob})[0][0]
            cos.append(float(f @ refs[i] / np.linalg.norm(f)))
    assert report["count"] == 15
    assert abs(report["mean"] - np.mean(cos)) < 1e-4
    assert abs(report["q05"] - np.quantile(cos, 0.05)) < 1e-4
    assert report["share_below_0.3"] == pytest.approx(np.mean(np.array(cos) < 0.3))
    assert (reference_run / "identity_cos.png").stat().st_size > 5_000


def test_different_identities_and_samples_give_different_images(reference_run):
    from PIL import Image

    def img(i, k):
        with Image.open(reference_run / f"{i:06d}" / f"{k:03d}.png") as im:
            return np.asarray(im, np.int16)

    for a, b in [((0, 0), (1, 0)), ((0, 0), (0, 1)), ((3, 2), (4, 2))]:
        assert np.abs(img(*a) - img(*b)).mean() > 1.0, (a, b)


def test_bits_do_not_depend_on_batch_size_or_identity_ranges(models, reference_run, tmp_path):
    out = tmp_path / "split"
    assert generate.main(_args(models, out, "--batch_size=5", "--identities=2:5")) == 0
    assert generate.main(_args(models, out, "--batch_size=3", "--identities=:2")) == 0
    assert _pngs(out) == _pngs(reference_run)
    assert (out / "manifest.jsonl").read_bytes() == (reference_run / "manifest.jsonl").read_bytes()
    assert (out / "report.2-5.json").exists() and (out / "report.0-2.json").exists()
    # A re-run skips everything.
    assert generate.main(_args(models, out, "--batch_size=4")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["written_this_run"] == 0 and report["skipped_existing"] == 15


def test_damaged_images_found_on_resume_are_redrawn(models, reference_run, tmp_path, capsys):
    """A PNG whose bytes differ from the manifest's sha256 (another valid image copied over
    it: only the checksum can tell) and a truncated PNG the manifest does not list yet
    (written after it, as before a kill) are both drawn again, bitwise as in the
    reference run."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference_run, out)
    swapped, truncated = out / "000001" / "002.png", out / "000003" / "000.png"
    shutil.copyfile(out / "000004" / "001.png", swapped)
    assert generate.png_decodes(swapped)
    truncated.write_bytes(truncated.read_bytes()[:200])
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(
        line for line in lines if '"path": "000003/000.png"' not in line))
    assert generate.main(_args(models, out, "--batch_size=4")) == 0
    err = capsys.readouterr().err
    assert "redrawing 2 damaged images" in err
    assert f"resuming in {out}: 13 of 15 images already there and intact, 2 left to draw" in err
    assert _pngs(out) == _pngs(reference_run)
    assert (out / "manifest.jsonl").read_bytes() == (reference_run / "manifest.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["written_this_run"] == 2 and report["skipped_existing"] == 13


def test_more_images_per_identity_keeps_the_earlier_ones(models, reference_run, tmp_path):
    out = tmp_path / "grow"
    assert generate.main(_args(models, out, "--identities=0:1")) == 0
    assert generate.main(_args(models, out, "--identities=0:1", "--images_per_identity=4")) == 0
    now = _pngs(out)
    for k in range(3):
        name = f"000000/{k:03d}.png"
        assert now[name] == _pngs(reference_run)[name]
    assert "000000/003.png" in now


def test_kill_and_resume_is_bitwise_identical(models, reference_run, tmp_path):
    out = tmp_path / "killed"
    args = _args(models, out, "--batch_size=4")[1:]
    proc = subprocess.Popen([sys.executable, "-m", "bridges.generate", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Images land two at a time (one tile); kill as soon as the first tile is on disk.
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(out.rglob("*.png"))
    assert 2 <= len(first) < 15, "the run was not killed part-way"
    from PIL import Image

    for p in first:  # whatever was renamed into place is a complete image
        with Image.open(p) as im:
            im.load()
    assert generate.main(["generate", *args, "--batch_size=7"]) == 0
    assert not list(out.rglob("*.tmp"))
    assert _pngs(out) == _pngs(reference_run)
    assert (out / "manifest.jsonl").read_bytes() == (reference_run / "manifest.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_existing"] == len(first)
    assert report["written_this_run"] == 15 - len(first)


def test_sigterm_mid_draw_exits_130_and_the_resume_is_bitwise_identical(
        models, reference_run, tmp_path, monkeypatch, capsys):
    """SIGTERM while the second tile is drawn: exit 130 with the first tile's images kept
    and logged; the re-run draws only the rest, bitwise as the reference run."""
    import os

    out, calls = tmp_path / "term", []
    tile_images = arc2face.tile_images

    def terminated_on_the_second_tile(*args, **kwargs):
        calls.append(args[2:4])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return tile_images(*args, **kwargs)

    monkeypatch.setattr(arc2face, "tile_images", terminated_on_the_second_tile)
    assert generate.main(_args(models, out, "--identities=0:2")) == 130
    assert calls == [(0, 0), (0, 1)]  # stopped before the second tile was drawn
    assert "interrupted after 2 images" in capsys.readouterr().err
    assert sorted(_pngs(out)) == ["000000/000.png", "000000/001.png"]
    monkeypatch.setattr(arc2face, "tile_images", tile_images)
    assert generate.main(_args(models, out, "--identities=0:2")) == 0
    reference = _pngs(reference_run)
    assert _pngs(out) == {name: reference[name] for name in reference if name < "000002"}
    lines = (reference_run / "manifest.jsonl").read_text().splitlines(keepends=True)
    assert (out / "manifest.jsonl").read_text() == "".join(lines[:6])
    report = json.loads((out / "report.0-2.json").read_text())
    assert report["skipped_existing"] == 2 and report["written_this_run"] == 4


def test_a_second_sigterm_while_stopping_still_exits_130(models, tmp_path):
    """The first SIGTERM stops the run (exit 130); the interpreter's teardown then takes
    over a second with torch loaded, and a second SIGTERM during it (a scheduler's repeat,
    an impatient user) used to kill the process with 143."""
    out = tmp_path / "twice"
    args = _args(models, out, "--images_per_identity=20")[1:]
    proc = subprocess.Popen([sys.executable, "-m", "bridges.generate", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob("*.png")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    lines = []
    for line in proc.stderr:  # the run reports its stop, then the process winds down
        lines.append(line)
        if line.startswith("interrupted after"):
            time.sleep(0.2)  # the job has returned 130; the interpreter is tearing down
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=60) == 130, lines
    assert any(line.startswith("interrupted after") for line in lines)
    assert not any("Traceback" in line for line in lines), lines


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_write_the_same_files_as_one(models, reference_run, tmp_path):
    out = tmp_path / "two"
    args = _args(models, out, "--batch_size=2", f"--recognizer={models['recognizer']}")[1:]
    r = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
         "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
         "--dynamo_backend=no", f"--main_process_port={_free_port()}", "-m",
         "bridges.generate", *args],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 1/2" in r.stderr and "process 0/2" in r.stderr
    assert _pngs(out) == _pngs(reference_run)
    assert (out / "manifest.jsonl").read_bytes() == (reference_run / "manifest.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    assert sorted(c["written"] for c in report["per_process"]) == [5, 10]
    one = json.loads((reference_run / "report.json").read_text())["identity_check"]
    assert report["identity_check"]["count"] == 15
    assert report["identity_check"]["mean"] == pytest.approx(one["mean"], abs=1e-6)


def test_align_stores_the_aligned_face_or_lists_the_image_as_faceless(models, reference_run,
                                                                     tmp_path):
    import cv2

    from bridges import faces

    out = tmp_path / "aligned"
    assert generate.main(_args(models, out, "--align", f"--detector={models['detector']}",
                               "--keep_unaligned", "--det_threshold=0.3")) == 0
    detector = faces.load_detector(models["detector"], threshold=0.3)
    found = missing = 0
    for i in range(5):
        for k in range(3):
            name = f"{i:06d}/{k:03d}.png"
            original = (reference_run / name).read_bytes()
            assert (out / generate.UNALIGNED_DIR / name).read_bytes() == original
            expected = faces.align_largest(detector, cv2.imread(str(reference_run / name)))
            if expected is None:
                missing += 1
                assert not (out / name).exists()
                assert (out / generate.NO_FACE_DIR / name).read_bytes() == original
            else:
                found += 1
                assert not (out / generate.NO_FACE_DIR / name).exists()
                np.testing.assert_array_equal(cv2.imread(str(out / name)), expected)
    report = json.loads((out / "report.json").read_text())
    assert len(report["no_face"]) == missing and report["images_in_range"] == found
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == found
    assert found > 0 and missing > 0, "both branches must be exercised"


# ----------------------------------------------------------------------------- bad input

def _bad_cases(models, tmp: Path):
    refs = np.load(models["refs"])
    np.save(tmp / "d256.npy", refs[:, :256])
    nan = refs.copy()
    nan[2, 5] = np.nan
    np.save(tmp / "nan.npy", nan)
    zero = refs.copy()
    zero[1] = 0
    np.save(tmp / "zero.npy", zero)
    (tmp / "garbage.npy").write_bytes(b"not numpy")
    return [
        ([f"--arc2face={tmp / 'nowhere'}"], "--arc2face folder not found"),
        ([f"--base_model={tmp / 'nowhere'}"], "--base_model folder not found"),
        ([f"--references={tmp / 'd256.npy'}"], "dimension 256"),
        ([f"--references={tmp / 'nan.npy'}"], "NaN"),
        ([f"--references={tmp / 'missing.npy'}"], "not found"),
        ([f"--references={tmp / 'zero.npy'}"], "zero vector in row 1"),
        ([f"--references={tmp / 'garbage.npy'}"], "not a readable .npy"),
        (["--identities=3:9"], "--identities=3:9: out of range"),
        (["--identities=4:2"], "out of range"),
        (["--identities=abc"], "expected START:END"),
        (["--align"], "--detector"),
        ([f"--recognizer={tmp / 'no.onnx'}"], "recognizer not found"),
        (["--no_such_flag=1"], "no_such_flag"),
        (["--steps=0"], "steps"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(models, tmp_path, capsys):
    for extra, words in _bad_cases(models, tmp_path):
        out = tmp_path / "out"
        code = generate.main(_args(models, out) + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, extra
        assert len(err) == 1 and words in err[0], (extra, err)
        assert not out.exists(), extra


def test_missing_model_file_and_corrupt_weights_exit_2(models, tmp_path, capsys):
    import shutil

    broken = tmp_path / "a2f"
    shutil.copytree(models["arc2face"], broken)
    (broken / "encoder" / "config.json").unlink()
    assert generate.main(_args(models, tmp_path / "o1", f"--arc2face={broken}")) == 2
    assert "encoder config" in capsys.readouterr().err
    shutil.rmtree(broken)
    shutil.copytree(models["arc2face"], broken)
    weights = broken / "arc2face" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert generate.main(_args(models, tmp_path / "o2", f"--arc2face={broken}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load the Arc2Face UNet" in err[0]
    assert not (tmp_path / "o2").exists()


def test_other_settings_on_a_used_out_dir_are_refused(models, reference_run, capsys):
    before = _pngs(reference_run)
    assert generate.main(_args(models, reference_run, "--beta=0.01")) == 2
    err = capsys.readouterr().err
    assert "beta: 0.005 -> 0.01" in err
    assert _pngs(reference_run) == before


def test_paper_flagfile_holds_the_paper_settings():
    fv = cli.config_from_argv(generate.GenerateConfig,
                              [f"--flagfile={REPO / 'configs' / 'generate_paper.flags'}"])
    assert (fv.beta, fv.steps, fv.guidance, fv.images_per_identity) == (0.005, 25, 3.0, 50)
    assert fv.images_per_identity % fv.micro_batch == 0  # no image computed in vain
    assert fv.align and fv.detector and fv.recognizer


def test_help_exits_0(capsys):
    assert generate.main(["generate", "--help"]) == 0
    assert "--micro_batch" in capsys.readouterr().out
