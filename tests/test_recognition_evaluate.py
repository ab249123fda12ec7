"""`python -m bridges.evaluate`: several models ranked, group-aware similarity, bad input."""

import json
import pickle

import numpy as np
import pytest

from bridges import bins, evaluate
from bridges.verification import ten_fold_accuracy
from tests.test_recognition_train import TINY, make_dataset, train_with_one_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny trained models (AdaFace, GroupFace) and two .bin sets of noisy pairs."""
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "dataset")
    for name, head in (("ada", ["--head=adaface"]), ("group", ["--head=groupface",
                                                               "--groups=3"])):
        assert train_with_one_thread(f"--data={data}", f"--out_dir={root / name}",
                                     "--epochs=1", *TINY, *head) == 0
    rng = np.random.default_rng(1)
    (root / "bins").mkdir()
    for set_name, noise in (("easy", 10), ("hard", 80)):
        pairs, issame = [], []
        for k in range(40):
            base = rng.integers(0, 256, (20, 20, 3))
            other = base if k % 2 == 0 else rng.integers(0, 256, (20, 20, 3))
            noisy = [np.clip(x + rng.normal(0, noise, x.shape), 0, 255).astype(np.uint8)
                     for x in (base, other)]
            pairs.append(tuple(noisy))
            issame.append(k % 2 == 0)
        bins.write(root / "bins" / f"{set_name}.bin", pairs, issame)
    return root


def test_models_are_ranked_by_mean_and_borda(setup, tmp_path):
    out = tmp_path / "eval"
    code = evaluate.main(["evaluate", f"--models={setup / 'ada'},{setup / 'group'}",
                          f"--bins={setup / 'bins'}", f"--out_dir={out}", "--progress=false"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"ada", "group"}
    assert set(report["results"]["ada"]) == {"easy", "hard"}
    table = {m: {s: r["accuracy_mean"] for s, r in sets.items()}
             for m, sets in report["results"].items()}
    ranking = {r["model"]: r for r in report["ranking"]}
    for model in table:
        assert ranking[model]["mean"] == pytest.approx(np.mean(list(table[model].values())))
    wins = sum(table["ada"][s] > table["group"][s] for s in ("easy", "hard"))
    ties = sum(table["ada"][s] == table["group"][s] for s in ("easy", "hard"))
    assert ranking["ada"]["borda"] == wins + 0.5 * ties
    assert ranking["ada"]["borda"] + ranking["group"]["borda"] == 2
    md = (out / "results.md").read_text()
    assert "Borda" in md and "| ada |" in md and "| group |" in md
    assert (out / "roc.png").stat().st_size > 10_000


def test_group_aware_similarity_scores(setup, tmp_path):
    out = tmp_path / "gs"
    code = evaluate.main(["evaluate", f"--model={setup / 'group' / 'model.pt'}",
                          f"--bins={setup / 'bins' / 'easy.bin'}", f"--out_dir={out}",
                          "--group_similarity", "--progress=false"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())["results"]["group"]["easy"]
    # Recompute from the model: S* = cos + 0.1 D^-1/3 of the flip-summed features.
    from bridges.recognition.model import load_model

    model = load_model(setup / "group" / "model.pt")
    encoded, issame = bins.read(setup / "bins" / "easy.bin")
    emb, inter = evaluate.embed(model, bins.decode(encoded, 16), batch_size=7, flip=True,
                                device="cpu")
    scores = evaluate.pair_scores(emb, inter, True)
    cos = evaluate.pair_scores(emb, inter, False)
    assert (scores > cos).all()  # the group term is positive
    assert result["accuracy_mean"] == pytest.approx(ten_fold_accuracy(scores, issame)["mean"])


def test_bad_input_exits_2(setup, tmp_path, capsys):
    (tmp_path / "nobins").mkdir()
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([np.zeros(1)], [True])))
    fake_model = tmp_path / "model.pt"
    fake_model.write_bytes(b"not a checkpoint")
    good = f"--bins={setup / 'bins'}"
    cases = [
        ([f"--model={tmp_path / 'missing.pt'}", good], "model file not found"),
        ([f"--model={fake_model}", good], "not a bridges.train checkpoint"),
        ([f"--model={setup / 'ada'}", f"--bins={tmp_path / 'nobins'}"], "no .bin files"),
        ([f"--model={setup / 'ada'}", f"--bins={evil}"], "not allowed"),
        ([f"--model={setup / 'ada'}", good, "--sets=lfw"], "--sets lfw"),
        ([f"--model={setup / 'ada'}", f"--models={setup / 'ada'}", good], "exactly one"),
        ([f"--model={setup / 'ada'}", good, "--group_similarity"], "needs GroupFace"),
        ([f"--model={setup / 'ada'}", good, "--far=2"], "--far"),
        ([f"--model={setup / 'ada'}", good, "--bogus"], "bogus"),
    ]
    for flags, words in cases:
        out = tmp_path / "out"
        code = evaluate.main(["evaluate", f"--out_dir={out}", "--progress=false", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (flags, err)
        assert len(err) == 1 and words in err[0], (flags, err)
        assert not out.exists()
