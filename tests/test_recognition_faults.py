"""bridges.evaluate and bridges.train on the faults that used to end in a traceback:
models giving NaN or overflowing embeddings, a model.pt whose weights are not a dict,
crafted checkpoints that carry a matching checksum, a learning rate that diverges. Each
case: one `error:` line, exit 2 (bad input) or 1 (the run failed), nothing written."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bridges import bins, evaluate, train
from bridges.recognition import train as train_lib
from tests.test_recognition_train import TINY, make_dataset, train_with_one_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run (its checkpoint is what the crafted cases start from) and a .bin."""
    root = tmp_path_factory.mktemp("faults")
    data = make_dataset(root / "data")
    assert train_with_one_thread(f"--data={data}", f"--out_dir={root / 'run'}", "--epochs=1",
                                 *TINY) == 0
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (16, 16, 3)), rng.integers(0, 256, (16, 16, 3)))
             for _ in range(10)]
    bins.write(root / "tiny.bin", pairs, [k % 2 == 0 for k in range(10)])
    return {"root": root, "data": data, "run": root / "run", "bin": root / "tiny.bin",
            "checkpoint": torch.load(root / "run" / "checkpoints" / "epoch_001.pt",
                                     weights_only=True)}


def _model_file(trained, path: Path, edit) -> Path:
    """model.pt of the trained run with `edit(blob)` applied."""
    blob = copy.deepcopy(torch.load(trained["run"] / "model.pt", weights_only=True))
    edit(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def _set(key, value):
    def edit(blob):
        blob["model"][key] = blob["model"][key].clone().fill_(value)
    return edit


def _scale_fc(factor):
    """Finite weights whose embeddings overflow float32 (~1e38 times the BN gain)."""
    def edit(blob):
        blob["model"]["backbone.fc.weight"] *= 1e37
        blob["model"]["backbone.features.weight"].fill_(factor)
    return edit


EVALUATE_CASES = {
    "NaN weights": (_set("backbone.features.bias", float("nan")),
                    "weights entry 'backbone.features.bias' holds NaN or Inf"),
    "embeddings beyond float32": (_scale_fc(1e6), "gives non-finite embeddings (NaN or Inf) "
                                                  "for image 0"),
    "model entry a list": (lambda blob: blob.update(model=[1, 2]),
                           "weights are a list, not a dict of tensors"),
    "model entry of strings": (lambda blob: blob["model"].update(
        {"backbone.fc.bias": "x"}), "entry 'backbone.fc.bias' is a str, not a tensor"),
    "model entry lacking keys": (lambda blob: blob.update(model={"a": torch.zeros(1)}),
                                 "do not fit the stored spec: they lack 'backbone.conv1"),
}


def _craft(name, edit):
    def craft(blob):
        edit(blob)
        return blob
    return name, craft


def _momentum_shape(blob):
    state = blob["optimizer"]["state"]
    key = next(iter(state))
    state[key]["momentum_buffer"] = torch.zeros(3)


# Crafted checkpoints: written through the trainer's own save, so checksums.json matches.
CHECKPOINT_CASES = dict([
    _craft("trainee a list", lambda b: b.update(trainee=[1])),
    _craft("trainee NaN", lambda b: b["trainee"]["head.weight"].fill_(float("nan"))),
    _craft("trainee lacks a key", lambda b: b["trainee"].pop("head.weight")),
    _craft("optimizer a string", lambda b: b.update(optimizer="x")),
    _craft("optimizer without groups", lambda b: b.update(optimizer={"state": {}})),
    _craft("momentum buffer of another shape", _momentum_shape),
    _craft("momentum setting a string", lambda b: b["optimizer"]["param_groups"][0].update(
        momentum="x")),
    _craft("identity a list", lambda b: b.update(identity=[1])),
    _craft("epoch a string", lambda b: b.update(epoch="1")),
    _craft("step beyond the epoch", lambda b: b.update(step=10**9)),
    _craft("step rows a dict", lambda b: b.update(step_rows={})),
    _craft("a row's loss a string", lambda b: b["epoch_rows"][0].update(loss="low")),
    _craft("a row's loss NaN", lambda b: b["step_rows"][0].update(loss=math.nan)),
])
CHECKPOINT_WORDS = {
    "trainee a list": "its model and head weights are a list",
    "trainee NaN": "its model and head weights entry 'head.weight' holds NaN or Inf",
    "trainee lacks a key": "its model and head weights do not fit this run's model: they "
                           "lack 'head.weight'",
    "optimizer a string": "its optimizer is a str, not a dict",
    "optimizer without groups": "its state does not fit this run (KeyError",
    "momentum buffer of another shape": "a momentum buffer does not fit its parameter",
    "momentum setting a string": "its optimizer settings differ from this run's",
    "identity a list": "its identity is a list, not a dict",
    "epoch a string": "epoch '1' and step 2 do not end an epoch of 2 steps",
    "step beyond the epoch": "epoch 1 and step 1000000000 do not end an epoch",
    "step rows a dict": "its step_rows are not a list of 2 rows",
    "a row's loss a string": "a row of its epoch_rows is not",
    "a row's loss NaN": "a row of its step_rows is not",
}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert errors == err[-1:] and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize("case", [*(f"evaluate: {k}" for k in EVALUATE_CASES),
                                  *(f"checkpoint: {k}" for k in CHECKPOINT_CASES),
                                  "train: --lr=1e30"])
def test_a_fault_is_one_line_with_exit_1_or_2_and_writes_nothing(trained, tmp_path, capsys,
                                                                 case):
    kind, name = case.split(": ", 1)
    if kind == "evaluate":
        edit, words = EVALUATE_CASES[name]
        model = _model_file(trained, tmp_path / "m" / "model.pt", edit)
        out = tmp_path / "out"
        code = evaluate.main(["evaluate", f"--model={model}", f"--bins={trained['bin']}",
                              f"--out_dir={out}", "--progress=false", "--threads=1"])
        assert code == 2
        assert not out.exists()
    elif kind == "checkpoint":
        import shutil

        run = tmp_path / "run"
        shutil.copytree(trained["run"], run)
        path = run / "checkpoints" / "epoch_001.pt"
        blob = CHECKPOINT_CASES[name](copy.deepcopy(trained["checkpoint"]))
        train_lib._save_torch(path, blob, ledger_keep=[path.name])  # a matching checksum
        before = _files(run)
        code = train.main(["train", f"--data={trained['data']}", f"--out_dir={run}",
                           "--epochs=2", *TINY])
        assert code == 2
        assert _files(run) == before  # nothing rewritten, the lock released
        words = f"checkpoint {path}: " + CHECKPOINT_WORDS[name]
    else:
        out = tmp_path / "diverged"
        code = train.main(["train", f"--data={trained['data']}", f"--out_dir={out}",
                           "--lr=1e30", *TINY])
        assert code == 1
        assert not out.exists()
        words = "training diverged: the loss is nan at step 2 (--lr=1e+30); lower --lr"
    line = _one_error(capsys)
    assert words in line, line
    if kind == "checkpoint":
        assert line.endswith("; delete it to resume from the one before, or use a new "
                             "--out_dir"), line


def test_embeddings_far_beyond_unit_norm_are_normalised_in_float64(trained, tmp_path):
    """Embeddings of ~1e30 (finite in float32) used to be normalised in float32, where the
    squared norm overflows: every embedding became zero and every cosine 0, silently. The
    flip sum and the norm are now float64: the embeddings are those of the float64
    reference; beyond float32's range (the flip sum or the raw embedding Inf) the model is
    refused (the parametrised case above)."""
    import torch.nn.functional as F

    from bridges.recognition.data import to_tensor
    from bridges.recognition.model import load_model

    encoded, _ = bins.read(trained["bin"])
    images = bins.decode(encoded, 16)
    x = torch.stack([to_tensor(im) for im in images])
    model = load_model(trained["run"] / "model.pt")
    with torch.no_grad():
        scale = 1e30 / float(model(x)["embedding"].abs().max())

    def scaled(blob):  # the last batch norm's affine part times `scale`: y -> scale * y
        blob["model"]["backbone.features.weight"] *= scale
        blob["model"]["backbone.features.bias"] *= scale

    model = load_model(_model_file(trained, tmp_path / "model.pt", scaled))
    emb, _ = evaluate.embed(model, images, batch_size=4, flip=True, device="cpu")
    with torch.no_grad():
        a, b = model(x)["embedding"], model(torch.flip(x, dims=[3]))["embedding"]
    assert float(a.abs().max()) == pytest.approx(1e30, rel=1e-5)
    assert (F.normalize(a + b, dim=1) == 0).all()  # what float32 gave
    raw = a.double() + b.double()
    np.testing.assert_allclose(emb, (raw / raw.norm(dim=1, keepdim=True)).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)


def test_a_checkpoint_of_other_settings_is_named_as_such_before_its_contents(
        trained, tmp_path, capsys):
    """The identity is compared first: another batch size also changes the steps per
    epoch, which the checkpoint's own checks would otherwise report."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    flags = [f for f in TINY if not f.startswith("--batch_size")]
    code = train.main(["train", f"--data={trained['data']}", f"--out_dir={run}",
                       "--epochs=2", "--batch_size=8", *flags])
    assert code == 2
    line = _one_error(capsys)
    assert "holds a run with different settings (batch_size: 16 -> 8)" in line, line


def test_nan_weights_at_an_epoch_end_stop_the_run_before_anything_is_saved(tmp_path):
    """A step's loss is taken before its update, so the last step of an epoch can leave
    NaN weights behind a finite loss: the epoch-end save and the final outputs check the
    weights first, and the message names the checkpoints that are kept."""
    from types import SimpleNamespace

    from hyperface_jax.io.files import RunFailed

    trainee = torch.nn.Linear(2, 2)
    p = SimpleNamespace(trainee=trainee, out=tmp_path, config=SimpleNamespace(lr=1e30))
    train_lib.check_finite_weights(p, 4)  # finite: nothing raised
    with torch.no_grad():
        trainee.bias[1] = math.inf
    with pytest.raises(RunFailed, match=r"^training diverged: bias holds NaN or Inf after step "
                                        r"4 \(--lr=1e\+30\); lower --lr$"):
        train_lib.check_finite_weights(p, 4)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_002.pt").write_bytes(b"")
    with pytest.raises(RunFailed, match="lower --lr in a new --out_dir .* keeps its "
                                        "checkpoints up to epoch_002"):
        train_lib.check_finite_weights(p, 4)
