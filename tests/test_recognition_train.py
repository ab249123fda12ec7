"""`python -m bridges.train`: outputs, resume, bad input, and torchrun with 2 processes
matching 1 process."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridges import train
from bridges.recognition.model import load_model
from tests.conftest import REPO, cli_env

TINY = ["--arch=ir18", "--width=4", "--input_size=16", "--embedding_size=16", "--workers=0",
        "--progress=false", "--batch_size=16", "--lr_steps=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_dataset(root: Path, identities=6, per_identity=6, size=20, seed=0) -> Path:
    """Identity folders in the layout bridges.generate writes (%06d/%03d.png): each
    identity a random base image, its samples noisy copies."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        base = rng.integers(0, 256, (size, size, 3))
        folder = root / f"{i:06d}"
        folder.mkdir(parents=True)
        for k in range(per_identity):
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{k:03d}.png")
    return root


def train_with_one_thread(*flags) -> int:
    """`bridges.train` in this process with one torch thread (for module fixtures, which
    the function-scoped `one_torch_thread` does not cover)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.main(["train", *flags])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "dataset")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_writes_model_curves_and_checkpoints(dataset, tmp_path):
    out = tmp_path / "run"
    code = train.main(["train", f"--data={dataset}", f"--out_dir={out}", "--epochs=3",
                       "--keep_checkpoints=2", "--augment=flip,crop,color,lowres,erase",
                       "--warmup_epochs=1", *TINY])
    assert code == 0
    history = _rows(out / "history.csv")
    steps = _rows(out / "steps.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert len(steps) == 3 * (36 // 16)
    # Warm-up over epoch 1 (2 steps), then 0.1 until epoch 1 ends ... decayed after it.
    assert [float(r["lr"]) for r in steps] == pytest.approx([0.05, 0.1, 0.01, 0.01, 0.01, 0.01])
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checksums.json", "epoch_002.pt", "epoch_003.pt"]
    assert sorted(json.loads((out / "checkpoints" / "checksums.json").read_text())) == [
        "epoch_002.pt", "epoch_003.pt"]  # pruned with the checkpoints
    assert (out / "curves.png").stat().st_size > 10_000
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_done"] == 3 and report["num_classes"] == 6
    assert report["flags"]["head"] == "adaface" and report["world_size"] == 1
    model = load_model(out / "model.pt")
    assert model(torch.zeros(2, 3, 16, 16))["embedding"].shape == (2, 16)


def test_resume_after_an_epoch_matches_the_uninterrupted_run(dataset, tmp_path, capsys):
    args = [f"--data={dataset}", "--head=groupface", "--groups=3", "--augment=flip,erase", *TINY]
    assert train.main(["train", f"--out_dir={tmp_path / 'straight'}", "--epochs=2", *args]) == 0
    assert train.main(["train", f"--out_dir={tmp_path / 'split'}", "--epochs=1", *args]) == 0
    capsys.readouterr()
    assert train.main(["train", f"--out_dir={tmp_path / 'split'}", "--epochs=2", *args]) == 0
    resumed = tmp_path / "split" / "checkpoints" / "epoch_001.pt"
    assert f"resuming after epoch 1 of 2 (step 2) from {resumed}" in capsys.readouterr().err
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert _rows(tmp_path / "straight" / "steps.csv") == _rows(tmp_path / "split" / "steps.csv")
    # A resumed run with other settings is refused.
    code = train.main(["train", f"--out_dir={tmp_path / 'split'}", "--epochs=3", "--lr=0.5",
                       *args])
    assert code == 2
    # So is a damaged checkpoint (named in the message).
    (tmp_path / "split" / "checkpoints" / "epoch_002.pt").write_bytes(b"truncated")
    assert train.main(["train", f"--out_dir={tmp_path / 'split'}", "--epochs=3", *args]) == 2


def test_epoch_end_hooks_see_the_model_of_each_checkpointed_epoch(dataset, tmp_path):
    """Extra epoch-end hooks (e.g. a verification, as arcface_torch's callbacks) run after
    the epoch's checkpoint, on the model that checkpoint holds."""
    from bridges.recognition.config import TrainConfig
    from bridges.recognition.train import run

    probe = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = []

    def verify(p, history):
        p.trainee.model.eval()  # the loop sets training mode again at the next epoch
        with torch.no_grad():
            seen.append((history.epoch, history.step, p.trainee.model(probe)["embedding"]))

    c = TrainConfig(data=str(dataset), out_dir=str(tmp_path / "run"), arch="ir18", width=4,
                    input_size=16, embedding_size=16, workers=0, progress=False,
                    batch_size=16, lr_steps="1", epochs=2)
    report = run(c, log=lambda msg: None, hooks=[verify])
    assert [(e, s) for e, s, _ in seen] == [(1, 2), (2, 4)] and report["steps"] == 4
    for epoch, _, embedding in seen:
        model = load_model(tmp_path / "run" / "checkpoints" / f"epoch_{epoch:03d}.pt")
        with torch.no_grad():
            torch.testing.assert_close(model(probe)["embedding"], embedding, rtol=0, atol=0)
    assert not torch.equal(seen[0][2], seen[1][2])

def _bad_inputs(tmp: Path, dataset: Path):
    (tmp / "empty").mkdir()
    one = tmp / "one"
    (one / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a" / "0.png")
    corrupt = tmp / "corrupt"
    make_dataset(corrupt, identities=2, per_identity=4)
    (corrupt / "000001" / "002.png").write_bytes(b"not a png")
    return [
        ([f"--data={tmp / 'missing'}"], "not found"),
        ([f"--data={tmp / 'empty'}"], "0 identity folders"),
        ([f"--data={one}"], "1 identity folders"),
        ([f"--data={dataset}", "--arch=ir999"], "--arch=ir999: value should be one of"),
        ([f"--data={dataset}", "--head=sphereface"], "--head=sphereface: value should be one of"),
        ([f"--data={dataset}", "--batch_size=1000"], "fewer than --batch_size"),
        ([f"--data={dataset}", "--input_size=20"], "multiple of 16"),
        ([f"--data={dataset}", "--augment=flip,rotate"], "unknown --augment rotate"),
        ([f"--data={dataset}", "--lr_steps=a,b"], "--lr_steps"),
        ([f"--data={dataset}", "--no_such_flag=1"], "no_such_flag"),
        ([f"--data={dataset}", "--epochs=zero"], "epochs"),
        ([f"--data={corrupt}", "--batch_size=4"], "cannot read image"),
    ]


def test_bad_input_exits_2_with_one_line(dataset, tmp_path, capsys):
    for flags, words in _bad_inputs(tmp_path, dataset):
        out = tmp_path / "out"
        code = train.main(["train", f"--out_dir={out}", *TINY, *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (flags, err)
        errors = [line for line in err if line.startswith("error:")]
        assert errors == err[-1:] and words in err[-1], (flags, err)
        assert not (out / "model.pt").exists() and not (out / "checkpoints").exists()


def test_corrupt_image_in_a_worker_is_one_line_too(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", identities=2, per_identity=4)
    (data / "000000" / "001.png").write_bytes(b"\x89PNG broken")
    code = train.main(["train", f"--data={data}", f"--out_dir={tmp_path / 'o'}", *TINY,
                       "--workers=1", "--batch_size=4"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: cannot read image") and "001.png" in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1


def test_two_process_torchrun_matches_one_process(dataset, tmp_path):
    # The float32 sums of batch norm and the head differ in order between one and two
    # processes; with s = 64 such differences grow step by step, so the first steps are
    # compared, at a learning rate that keeps them near 1e-5.
    args = [f"--data={dataset}", "--epochs=2", "--augment=flip,crop,color,lowres,erase",
            "--head=adaface", *TINY, "--width=8", "--input_size=32", "--lr=0.01"]
    assert train.main(["train", f"--out_dir={tmp_path / 'one'}", *args]) == 0
    env = cli_env(OMP_NUM_THREADS="1")  # torchrun sets it too
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "bridges.train", f"--out_dir={tmp_path / 'two'}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = _rows(tmp_path / "one" / "steps.csv")
    two = _rows(tmp_path / "two" / "steps.csv")
    assert len(one) == len(two) == 4  # two epochs of two steps
    for a, b in zip(one, two, strict=True):
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-4, (a, b)
        assert a["accuracy"] == b["accuracy"]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2
    assert os.path.exists(tmp_path / "two" / "model.pt")


@pytest.mark.parametrize("name, arch, head, lr_steps", [
    ("hyperface", "ir50", "adaface", "12,20,24"),
    ("diffr", "ir50", "cosface", "10,16,21,25"),
    ("vec2face", "se_ir50", "arcface", "12,20,24")])
def test_training_flagfiles_run(dataset, tmp_path, name, arch, head, lr_steps):
    out = tmp_path / name
    # The shipped flagfile, shrunk (width, input, batch, one step) so CI stays quick.
    code = train.main(["train", f"--flagfile={REPO / 'configs' / f'train_{name}.flags'}",
                       f"--data={dataset}", f"--out_dir={out}", "--width=4", "--input_size=16",
                       "--batch_size=16", "--max_steps=1", "--workers=0", "--progress=false"])
    assert code == 0
    flags = json.loads((out / "report.json").read_text())["flags"]
    assert (flags["arch"], flags["head"], flags["lr_steps"]) == (arch, head, lr_steps)
    assert flags["weight_decay"] == 5e-4 and flags["momentum"] == 0.9


def test_any_folder_per_identity_layout_is_accepted(tmp_path):
    from bridges.recognition.data import scan

    for name, files in {"bob": ["b.JPG", "a.png", "notes.txt"], "alice": ["x.jpeg"],
                        "empty": [], ".hidden": ["h.png"], "carol": [".tmp.png", "c.bmp"]}.items():
        (tmp_path / name).mkdir()
        for f in files:
            if f.lower().endswith((".jpg", ".jpeg")):
                Image.new("RGB", (4, 4)).save(tmp_path / name / f, format="JPEG")
            else:
                (tmp_path / name / f).write_bytes(b"x")
    (tmp_path / "stray.png").write_bytes(b"x")
    folder = scan(tmp_path)
    assert folder.identities == ("alice", "bob", "carol")
    assert [Path(p).name for p in folder.paths] == ["x.jpeg", "a.png", "b.JPG", "c.bmp"]
    assert folder.labels.tolist() == [0, 1, 1, 2]


def test_process_slices_make_up_the_one_process_batches():
    from bridges.recognition.data import GlobalBatchSampler

    one = list(GlobalBatchSampler(50, 8, seed=3, epoch=1))
    halves = [list(GlobalBatchSampler(50, 8, rank=r, world=2, seed=3, epoch=1)) for r in (0, 1)]
    assert len(one) == 6  # 50 // 8, the last partial batch dropped
    assert [a + b for a, b in zip(*halves, strict=True)] == one
    assert one != list(GlobalBatchSampler(50, 8, seed=3, epoch=2))  # reshuffled per epoch


def _trainee(head):
    from bridges.recognition.config import TrainConfig
    from bridges.recognition.train import Trainee

    torch.manual_seed(0)
    return Trainee(TrainConfig(arch="ir18", width=8, input_size=32, embedding_size=16,
                               head=head, groups=3), num_classes=5)


def _gradients(trainee, x, y):
    loss, _ = trainee(x, y)
    loss.backward()
    module = getattr(trainee, "module", trainee)
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def _ddp_worker(rank, x, y, init_file, out_file):
    import torch.distributed as dist

    from bridges.recognition.distributed import convert_sync_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    half = len(x) // 2
    grads = {}
    for head in ("adaface", "groupface"):
        net = torch.nn.parallel.DistributedDataParallel(convert_sync_batchnorm(_trainee(head)))
        grads[head] = _gradients(net, x[rank * half:(rank + 1) * half],
                                 y[rank * half:(rank + 1) * half])
    if rank == 0:
        torch.save(grads, out_file)
    dist.destroy_process_group()


def test_two_process_gradients_equal_the_one_process_gradients(tmp_path):
    """The exact check behind the torchrun test: global-batch batch norm, AdaFace's norm
    statistics and GroupFace's batch mean make the DDP gradient that of the full batch."""
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    mp.spawn(_ddp_worker, args=(x, y, str(tmp_path / "rendezvous"), str(tmp_path / "g.pt")),
             nprocs=2)
    two = torch.load(tmp_path / "g.pt", weights_only=True)
    for head in ("adaface", "groupface"):
        one = _gradients(_trainee(head), x, y)
        assert one.keys() == two[head].keys()
        scale = max(g.abs().max().item() for g in one.values())
        worst = max((one[k] - two[head][k]).abs().max().item() for k in one)
        assert worst < 1e-5 * scale, (head, worst, scale)
        # Per-process statistics (plain DDP: the mean of the two half-batch gradients)
        # would be far off, so the tolerance above can tell the two apart.
        halves = [_gradients(_trainee(head), x[i:i + 8], y[i:i + 8]) for i in (0, 8)]
        local = max(((halves[0][k] + halves[1][k]) / 2 - one[k]).abs().max().item()
                    for k in one)
        assert local > 100 * 1e-5 * scale, (head, local, scale)
