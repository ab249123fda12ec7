"""`python -m bridges.evaluate --ijb`: an IJB-format set built from scikit-learn's digits
(subjects = digit classes, several media per template, loose crops shifted around the
ArcFace landmark template), figures recomputed here in plain numpy, and bad metadata."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridges import evaluate
from bridges.recognition.model import FaceModel
from hyperface_jax.io.files import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The ArcFace 112 x 112 five-point template (insightface face_align.arcface_dst).
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]])
LOOSE = 128  # loose crops: the face at an integer offset in a larger image
SUBJECTS = 14  # subject s draws images of digit s % 10: some subjects look alike
TEMPLATES_PER_SUBJECT = 2
SPEC = {"arch": "ir18", "width": 4, "embedding_size": 16, "input_size": 32, "dropout": 0.0,
        "head": "adaface", "groups": 3, "group_aggregation": "soft"}


def build_ijb(root: Path, prefix: str = "ijbc", galleries=("G1", "G2"), seed: int = 0) -> dict:
    """Write meta/ and loose_crop/; return what the test needs to recompute the figures."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    crops, templates = [], {}
    pool = {d: list(rng.permutation(np.flatnonzero(digits.target == d))) for d in range(10)}
    for s in range(SUBJECTS):
        for j in range(TEMPLATES_PER_SUBJECT):
            tid = 1000 + 37 * (s * TEMPLATES_PER_SUBJECT + j)  # sparse, unordered below
            templates[tid] = s
            for m in range(int(rng.integers(1, 4))):         # 1-3 media per template
                media = 50 + s * 3 + m                          # media ids shared across
                for _ in range(int(rng.integers(1, 3))):        # 1-2 frames per media
                    index = pool[s % 10].pop()
                    name = f"{len(crops) + 1}.png"
                    dx, dy = (int(v) for v in rng.integers(0, LOOSE - 112 + 1, size=2))
                    face = Image.fromarray((digits.images[index] * 15.9).astype(np.uint8)) \
                        .resize((112, 112), Image.BILINEAR).convert("RGB")
                    canvas = np.zeros((LOOSE, LOOSE, 3), np.uint8)
                    canvas[dy:dy + 112, dx:dx + 112] = np.asarray(face)
                    tint = rng.integers(0, 60, size=3).astype(np.uint8)  # some colour
                    canvas = np.clip(canvas.astype(int) + tint, 0, 255).astype(np.uint8)
                    Image.fromarray(canvas).save(root / "loose_crop" / name)
                    crops.append({"name": name, "template": tid, "media": media,
                                  "dx": dx, "dy": dy,
                                  "faceness": round(float(rng.uniform(0.3, 1.0)), 4)})
    order = rng.permutation(len(crops))  # crops listed out of template order
    crops = [crops[i] for i in order]
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("".join(
        f"{c['name']} {c['template']} {c['media']}\n" for c in crops))
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("".join(
        c["name"] + " " + " ".join(f"{v:.4f}" for v in (TEMPLATE + [c["dx"], c["dy"]]).ravel())
        + f" {c['faceness']}\n" for c in crops))
    ids = sorted(templates)
    pairs = [(a, b, int(templates[a] == templates[b])) for i, a in enumerate(ids)
             for b in ids[i + 1:]]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {y}\n" for a, b, y in pairs))
    # 1:N: the first template of subjects 0-6 form gallery 1, of 7-13 gallery 2; the other
    # templates are the probes (each mated in one gallery, non-mated in the other).
    first = {s: min(t for t in ids if templates[t] == s) for s in range(SUBJECTS)}
    split = {galleries[0]: range(0, 7), galleries[1]: range(7, SUBJECTS)}
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for g, subjects in split.items():
        (root / "meta" / f"{prefix}_1N_gallery_{g}.csv").write_text(header + "".join(
            f"{c['template']},{templates[c['template']]},{c['name']}\n" for c in crops
            if c["template"] in [first[s] for s in subjects]))
    probes = [t for t in ids if t not in first.values()]
    (root / "meta" / f"{prefix}_1N_probe_mixed.csv").write_text(header + "".join(
        f"{c['template']},{templates[c['template']]},{c['name']}\n" for c in crops
        if c["template"] in probes))
    return {"crops": crops, "templates": templates, "pairs": pairs,
            "galleries": {g: [first[s] for s in subjects] for g, subjects in split.items()},
            "probes": probes}


def _calibrated_model(spec, faces_nchw, path: Path, seed: int) -> FaceModel:
    """A random net maps every image to nearly one direction (cosines ~0.9999); batch-norm
    statistics taken on the crops spread the features out, so the figures are not
    decided by float rounding."""
    torch.manual_seed(seed)
    model = FaceModel(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(faces_nchw)
    model.eval()
    path.parent.mkdir()
    torch.save({"spec": spec, "model": model.state_dict()}, path)
    return model


@pytest.fixture(scope="module")
def ijb_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    meta = build_ijb(root / "IJBC")
    faces = [np.asarray(Image.open(root / "IJBC" / "loose_crop" / c["name"]).convert("RGB")
                        .crop((c["dx"], c["dy"], c["dx"] + 112, c["dy"] + 112))
                        .resize((32, 32), Image.BILINEAR), np.float32) for c in meta["crops"]]
    x = torch.from_numpy((np.stack(faces) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2).float()
    model = _calibrated_model(SPEC, x, root / "tiny" / "model.pt", seed=3)
    group_model = _calibrated_model({**SPEC, "head": "groupface"}, x,
                                    root / "group" / "model.pt", seed=4)
    return {"root": root / "IJBC", "meta": meta, "model": model,
            "model_path": root / "tiny" / "model.pt", "group_model": group_model,
            "group_model_path": root / "group" / "model.pt"}


# ----------------------------------------------------------------------------- reference

def _features_by_hand(s, detector_score=True, model="model",
                      key="embedding") -> dict[str, np.ndarray]:
    """crop name -> f(crop) + f(mirror) (times faceness), cropping the face out by its
    known offset (no alignment code), resizing it to the model's input and scaling pixels
    as arcface_torch does; one crop per forward pass (as the CLI with --batch_size=1).
    `key`: the model output to take (GroupFace: "intermediate" too)."""
    cache = f"raw_{model}_{key}"
    if cache not in s:
        s[cache] = {}
        with torch.no_grad():
            for c in s["meta"]["crops"]:
                rgb = np.asarray(Image.open(s["root"] / "loose_crop" / c["name"]).convert("RGB"))
                face = rgb[c["dy"]:c["dy"] + 112, c["dx"]:c["dx"] + 112]
                # The model's input side (32): resized as bridges.recognition.data does.
                face = np.asarray(Image.fromarray(face).resize((32, 32), Image.BILINEAR),
                                  np.float32)
                x = torch.from_numpy((face / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
                f = s[model](x)[key] + s[model](torch.flip(x, dims=[3]))[key]
                s[cache][c["name"]] = f[0].double().numpy()
    return {c["name"]: s[cache][c["name"]] * (c["faceness"] if detector_score else 1.0)
            for c in s["meta"]["crops"]}


def _templates_by_hand(s, features) -> dict[int, np.ndarray]:
    result = {}
    for t in s["meta"]["templates"]:
        media: dict[int, list] = {}
        for c in s["meta"]["crops"]:
            if c["template"] == t:
                media.setdefault(c["media"], []).append(features[c["name"]])
        v = sum(np.mean(group, axis=0) for group in media.values())
        result[t] = v / np.sqrt((v * v).sum())
    return result


def _lenient_threshold(impostor, target):
    """The smallest t among the scores (and -inf) with share(impostor > t) <= target."""
    candidates = np.concatenate([[-np.inf], np.unique(impostor)])
    return min(t for t in candidates if np.mean(impostor > t) <= target)


def test_ijb_figures_match_a_plain_numpy_computation(ijb_set, tmp_path):
    out = tmp_path / "out"
    code = evaluate.main(["evaluate", f"--model={ijb_set['model_path']}",
                          f"--ijb={ijb_set['root'].parent}", "--ijb_target=IJBC",
                          f"--out_dir={out}", "--progress=false", "--batch_size=1"])
    assert code == 0
    report = json.loads((out / "ijbc_results.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    feats = _templates_by_hand(ijb_set, _features_by_hand(ijb_set))
    pairs = ijb_set["meta"]["pairs"]
    scores = np.array([feats[a] @ feats[b] for a, b, _ in pairs])
    same = np.array([y == 1 for _, _, y in pairs])
    from sklearn.metrics import roc_curve

    from bridges import ijb

    read, labels = ijb.read_pairs(ijb_set["root"] / "meta" / "ijbc_template_pair_label.txt",
                                  np.array(sorted(ijb_set["meta"]["templates"])), "crops")
    assert read.tolist() == [[a, b] for a, b, _ in pairs] and (labels == same).all()
    saved = np.load(out / "ijbc_scores.npz")
    np.testing.assert_allclose(saved["scores_0"], scores, atol=1e-6)
    assert (saved["labels"] == same).all()
    rows = report["results"]["tiny"]["verification"]
    assert [r["far"] for r in rows] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    tars = []
    for r in rows:
        t = _lenient_threshold(scores[~same], r["far"])
        tars.append(np.mean(scores[same] > t))
        assert r["threshold"] == pytest.approx(t, abs=1e-6)
        assert r["tar"] == pytest.approx(tars[-1], abs=1e-6)
        assert r["far_achieved"] <= r["far"]
        # insightface ijb_11.py: the TPR of the ROC point nearest the target FPR.
        fpr, tpr, _ = roc_curve(same.astype(int), scores)
        fpr, tpr = np.flipud(fpr), np.flipud(tpr)
        _, nearest = min(zip(abs(fpr - r["far"]), range(len(fpr)), strict=True))
        assert r["tar_nearest_roc_point"] == pytest.approx(tpr[nearest], abs=1e-6)
    assert 0 < tars[-1] < 1 and len(set(tars)) > 1  # the figures are not degenerate
    seen = []
    assert report["impostor_pairs"] == int((~same).sum())
    assert report["templates"] == SUBJECTS * TEMPLATES_PER_SUBJECT

    # 1:N, per gallery, by brute force.
    score = lambda a, b: feats[a] @ feats[b]
    seen += _check_per_gallery(ijb_set["meta"], report["results"]["tiny"], score)
    assert min(seen) < 1  # ranks are not all trivially 1
    ident = report["results"]["tiny"]["identification"]
    for key in ("rank_1", "rank_5", "tpir_at_fpir_0.01", "tpir_at_fpir_0.1"):
        assert ident["mean"][key] == pytest.approx((ident["G1"][key] + ident["G2"][key]) / 2)
    # The insightface-comparable 1:N figures, as ijb_1n.py computes them.
    merged = _insightface_1n(ijb_set["meta"], score)
    got = report["results"]["tiny"]["identification_insightface"]
    for key, value in merged.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < merged["rank_1"] < merged["rank_10"] < 1  # not degenerate
    assert merged["tpir_at_fpir_0.1"] > 0
    md = (out / "ijbc_results.md").read_text()
    assert "| model |" in md and "TPIR@FPIR=0.01" in md and f"{100 * tars[-1]:.2f}" in md
    # Both kinds of figure are printed, each named.
    assert "insightface-comparable (ijb_11.py" in md and "insightface-comparable 1:N" in md
    nearest = " | ".join(f"{100 * r['tar_nearest_roc_point']:.2f}" for r in rows)
    assert f"| tiny | {nearest} |" in md
    cells = [f"{100 * merged[k]:.2f}" for k in ("rank_1", "rank_5", "rank_10",
                                                 "tpir_at_fpir_0.01", "tpir_at_fpir_0.1")]
    assert f"| tiny | {' | '.join(cells)} |" in md
    assert (out / "ijbc_roc.png").stat().st_size > 10_000


def _check_per_gallery(meta, result, score) -> list[float]:
    """Our per-gallery open-set 1:N figures against a brute-force computation with the
    template score `score(a, b)`; returns the rank figures seen."""
    t, seen = meta["templates"], []
    for g, gallery in meta["galleries"].items():
        got = result["identification"][g]
        mated = [p for p in meta["probes"] if t[p] in {t[x] for x in gallery}]
        other = [p for p in meta["probes"] if p not in mated]
        ranks, top = [], []
        for p in mated:
            sims = {t[x]: score(p, x) for x in gallery}
            ranks.append(1 + sum(v > sims[t[p]] for v in sims.values()))
            top.append(sims[t[p]])
        best_other = np.array([max(score(p, x) for x in gallery) for p in other])
        assert got["mated_probes"] == len(mated) and got["non_mated_probes"] == len(other)
        assert got["rank_1"] == pytest.approx(np.mean(np.array(ranks) == 1), abs=1e-6)
        assert got["rank_5"] == pytest.approx(np.mean(np.array(ranks) <= 5), abs=1e-6)
        seen += [got["rank_1"], got["rank_5"]]
        for f in (0.01, 0.1):
            thr = _lenient_threshold(best_other, f)
            expected = np.mean([r == 1 and s > thr for r, s in zip(ranks, top, strict=True)])
            assert got[f"tpir_at_fpir_{f:g}"] == pytest.approx(expected, abs=1e-6)
    return seen


def _insightface_1n(meta, score) -> dict:
    """insightface's ijb_1n.py evaluation(), step by step: G1 and G2 merged (np.unique
    order), gen_mask, top-k from argsort, the 'FPIR' threshold from heapq.nlargest over
    every non-mate score (mates masked with -2)."""
    import heapq
    import math

    t = meta["templates"]
    gallery = sorted(meta["galleries"]["G1"] + meta["galleries"]["G2"])
    probes = sorted(meta["probes"])
    gallery_ids = [t[g] for g in gallery]
    mask = []
    for p in probes:
        pos = [i for i, x in enumerate(gallery_ids) if t[p] == x]
        assert len(pos) == 1
        mask.append(pos[0])
    sim = np.array([[score(p, g) for g in gallery] for p in probes])
    top_inds = np.argsort(-sim)
    out = {f"rank_{k}": float(np.mean([mask[i] in top_inds[i, :k] for i in range(len(probes))]))
           for k in (1, 5, 10)}
    pos_sims = np.array([sim[i, mask[i]] for i in range(len(probes))])
    top_sims = sim.copy()
    top_sims[np.arange(len(probes)), mask] = -2.0
    neg_sims = top_sims[np.where(top_sims > -2.0)]
    fars = (0.01, 0.1)
    required = [math.ceil(len(probes) * f) for f in fars]
    neg_sims = heapq.nlargest(max(required), neg_sims)
    for far, k in zip(fars, required, strict=True):
        out[f"tpir_at_fpir_{far:g}"] = float(np.sum(pos_sims > neg_sims[k - 1]) / len(probes))
    return out


def test_groupface_scores_ijb_templates_by_group_aware_similarity(ijb_set, tmp_path, capsys):
    """The template form of S*: final features pooled as usual; intermediate features
    unit per crop, faceness-weighted, pooled the same way, unit; recomputed by hand."""
    out = tmp_path / "group"
    assert evaluate.main(["evaluate", f"--model={ijb_set['group_model_path']}",
                          f"--ijb={ijb_set['root']}", "--ijb_target=IJBC", "--group_similarity",
                          f"--out_dir={out}", "--progress=false", "--batch_size=1"]) == 0
    final = _templates_by_hand(ijb_set, _features_by_hand(ijb_set, model="group_model"))
    faceness = {c["name"]: c["faceness"] for c in ijb_set["meta"]["crops"]}
    inter = _features_by_hand(ijb_set, detector_score=False, model="group_model",
                              key="intermediate")
    inter = _templates_by_hand(ijb_set, {k: v / np.linalg.norm(v) * faceness[k]
                                         for k, v in inter.items()})

    def s_star(a, b):
        distance = max(np.linalg.norm(inter[a] - inter[b]), 1e-3)
        return final[a] @ final[b] + 0.1 * distance ** (-1 / 3)

    pairs = ijb_set["meta"]["pairs"]
    expected = np.array([s_star(a, b) for a, b, _ in pairs])
    got = np.load(out / "ijbc_scores.npz")["scores_0"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    cosine = np.array([final[a] @ final[b] for a, b, _ in pairs])
    assert np.ptp(got - cosine) > 1e-2  # the group term varies from pair to pair
    report = json.loads((out / "ijbc_results.json").read_text())
    result = report["results"]["group"]
    assert "group-aware similarity" in report["protocol"]["scores"]
    _check_per_gallery(ijb_set["meta"], result, s_star)
    merged = _insightface_1n(ijb_set["meta"], s_star)
    for key, value in merged.items():
        assert result["identification_insightface"][key] == pytest.approx(value, abs=1e-6), key
    # A model without groups has no intermediate features: refused in one line.
    capsys.readouterr()
    code = evaluate.main(["evaluate", f"--model={ijb_set['model_path']}",
                          f"--ijb={ijb_set['root']}", "--group_similarity",
                          f"--out_dir={tmp_path / 'plain'}", "--progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs GroupFace models" in err[0]
    assert not (tmp_path / "plain").exists()


def test_unweighted_and_normalised_crops_change_the_scores_as_defined(ijb_set, tmp_path):
    """Also in batches of 7: float32 convolutions of a batch differ from one image's in
    the last bits (~3e-6 on these cosines), so the tolerance is 1e-4 here; a crop fed to
    the wrong template would be off by far more."""
    out = tmp_path / "plain"
    assert evaluate.main(["evaluate", f"--model={ijb_set['model_path']}",
                          f"--ijb={ijb_set['root']}", "--ijb_target=IJBC", "--noijb_1n",
                          "--noijb_detector_score", "--noijb_feature_norm",
                          f"--out_dir={out}", "--progress=false", "--batch_size=7"]) == 0
    crops = _features_by_hand(ijb_set, detector_score=False)
    crops = {k: v / np.linalg.norm(v) for k, v in crops.items()}
    feats = _templates_by_hand(ijb_set, crops)
    scores = np.array([feats[a] @ feats[b] for a, b, _ in ijb_set["meta"]["pairs"]])
    np.testing.assert_allclose(np.load(out / "ijbc_scores.npz")["scores_0"], scores, atol=1e-4)
    weighted = _templates_by_hand(ijb_set, _features_by_hand(ijb_set))
    assert max(abs(weighted[a] @ weighted[b] - s)
               for (a, b, _), s in zip(ijb_set["meta"]["pairs"], scores, strict=True)) > 1e-3
    report = json.loads((out / "ijbc_results.json").read_text())
    assert "identification" not in report["results"]["tiny"]


def _variant(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    edit(dst / "meta")
    return dst


def _replace(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _negative_faceness(meta: Path) -> None:
    path = meta / "ijbc_name_5pts_score.txt"
    first, rest = path.read_text().split("\n", 1)
    path.write_text(first.rsplit(" ", 1)[0] + " -1\n" + rest)


def test_bad_ijb_metadata_exits_2_with_one_line(ijb_set, tmp_path, capsys):
    src = ijb_set["root"]
    pair_file = src / "meta" / "ijbc_template_pair_label.txt"
    first_pair = pair_file.read_text().splitlines()[0]
    a, b, y = first_pair.split()
    first_crop = (src / "meta" / "ijbc_face_tid_mid.txt").read_text().split()[0]

    def drop_crop(meta):
        (meta.parent / "loose_crop" / first_crop).unlink()

    def garbage_crop(meta):
        (meta.parent / "loose_crop" / first_crop).write_bytes(b"not an image")

    cases = {
        "no pair file": (lambda m: (m / "ijbc_template_pair_label.txt").unlink(),
                         "file not found"),
        "bad label": (lambda m: _replace(m / "ijbc_template_pair_label.txt", first_pair,
                                         f"{a} {b} 2"), "label must be 0 or 1, got 2"),
        "unknown template": (lambda m: _replace(m / "ijbc_template_pair_label.txt", first_pair,
                                                f"{a} 999 {y}"), "template 999 has no crop"),
        "text id": (lambda m: _replace(m / "ijbc_template_pair_label.txt", first_pair,
                                       f"{a} x {y}"), "must be integers"),
        "short line": (lambda m: _replace(m / "ijbc_template_pair_label.txt", first_pair,
                                          f"{a} {b}"), "expected 3 fields"),
        "missing crop": (drop_crop, "crop not found"),
        "unreadable crop": (garbage_crop, "not a readable image"),
        "lists disagree": (lambda m: _replace(m / "ijbc_name_5pts_score.txt", first_crop + " ",
                                              "other.png "), "same crops"),
        "negative faceness": (_negative_faceness, "faceness score must be in [0, 1]"),
        "one gallery missing": (lambda m: (m / "ijbc_1N_gallery_G2.csv").unlink(),
                                "1:N list not found"),
        "gallery template unknown": (lambda m: _replace(m / "ijbc_1N_gallery_G1.csv",
                                                        "FILENAME\n", "FILENAME\n999,1,x.png\n"),
                                     "template 999 has no crop"),
    }
    for k, (name, (edit, words)) in enumerate(cases.items()):
        root = _variant(src, tmp_path / f"case{k}", edit)
        out = tmp_path / f"out{k}"
        code = evaluate.main(["evaluate", f"--model={ijb_set['model_path']}", f"--ijb={root}",
                              f"--out_dir={out}", "--progress=false"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and words in err[0], (name, err)
        assert not out.exists(), name
    for flags, words in [([f"--ijb={tmp_path}"], "no meta/ folder"),
                         ([f"--ijb={src}", f"--bins={tmp_path}"], "one of --bins and --ijb"),
                         ([f"--ijb={src}", "--ijb_target=IJBB"], "file not found")]:
        code = evaluate.main(["evaluate", f"--model={ijb_set['model_path']}", *flags,
                              f"--out_dir={tmp_path / 'x'}", "--progress=false"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (flags, err)


def test_identification_blocks_and_subjects_with_several_templates():
    """Probe blocks give the figures of one pass; a subject with two gallery templates
    scores by the better one."""
    from bridges import ijb

    rng = np.random.default_rng(5)
    gallery, probes = rng.normal(size=(6, 8)), rng.normal(size=(40, 8))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    gallery_subjects = np.array([3, 1, 4, 1, 5, 9])        # subject 1 has two templates
    probe_subjects = rng.choice([1, 2, 3, 4, 5, 6, 7, 9], size=40)
    whole = ijb.identification(probes, probe_subjects, gallery, gallery_subjects)
    assert ijb.identification(probes, probe_subjects, gallery, gallery_subjects,
                              block=3) == whole
    sims = probes @ gallery.T
    best = np.stack([sims[:, 0], np.maximum(sims[:, 1], sims[:, 3]), sims[:, 2], sims[:, 4],
                     sims[:, 5]], axis=1)  # subjects 3, 1, 4, 5, 9
    order = [3, 1, 4, 5, 9]
    mated = [i for i, s in enumerate(probe_subjects) if s in order]
    ranks = [1 + int((best[i] > best[i, order.index(probe_subjects[i])]).sum()) for i in mated]
    assert whole["rank_1"] == pytest.approx(np.mean(np.array(ranks) == 1))
    assert whole["mated_probes"] == len(mated)
    # insightface's merged-gallery figures: the same in probe blocks; undefined (None, with
    # the reason) when a probe's subject is not exactly once in the gallery, as ijb_1n.py
    # then stops.
    once = np.array([3, 1, 4, 2, 5, 9])
    mated = np.isin(probe_subjects, once)
    merged = ijb.insightface_identification(probes[mated], probe_subjects[mated], gallery, once)
    assert ijb.insightface_identification(probes[mated], probe_subjects[mated], gallery, once,
                                          block=3) == merged
    assert merged["rank_1"] <= merged["rank_5"] <= merged["rank_10"] == 1.0
    twice = ijb.insightface_identification(probes, probe_subjects, gallery, gallery_subjects)
    assert twice["rank_1"] is None and "not exactly once" in twice["undefined"]
    scores = ijb.pair_scores(np.arange(6), gallery, np.array([[0, 1], [2, 5], [3, 3]]), block=2)
    np.testing.assert_allclose(scores, [gallery[0] @ gallery[1], gallery[2] @ gallery[5], 1.0])


def _append(path: Path, line: str) -> int:
    """Append `line`; return its line number."""
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


def _first_line(path: Path, skip_header: bool = False) -> str:
    return path.read_text().splitlines()[1 if skip_header else 0]


def _set_first_points(meta: Path, values: str) -> None:
    path = meta / "ijbc_name_5pts_score.txt"
    first, rest = path.read_text().split("\n", 1)
    path.write_text(first.split(" ", 1)[0] + " " + values + "\n" + rest)


def _rename_first_crop(meta: Path, name: str) -> None:
    for file in ("ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt"):
        first, rest = (meta / file).read_text().split("\n", 1)
        (meta / file).write_text(name + " " + first.split(" ", 1)[1] + "\n" + rest)


def _duplicate_crop(meta: Path) -> tuple[str, int, str]:
    for file in ("ijbc_name_5pts_score.txt", "ijbc_face_tid_mid.txt"):
        line = _append(meta / file, _first_line(meta / file))
    name = _first_line(meta / "ijbc_face_tid_mid.txt").split()[0]
    return "ijbc_face_tid_mid.txt", line, f"crop {name!r} is listed again (first at line 1)"


def _doubled_pairs(meta: Path) -> tuple[str, int, str]:
    """The tester's case: every pair line twice (378 -> 756 pairs)."""
    path = meta / "ijbc_template_pair_label.txt"
    text = path.read_text()
    assert len(text.splitlines()) == 378
    path.write_text(text + text)
    a, b, _ = _first_line(path).split()
    return path.name, 379, f"the pair of templates {a} and {b} is listed again (first at line 1)"


def _reversed_pair(meta: Path) -> tuple[str, int, str]:
    path = meta / "ijbc_template_pair_label.txt"
    a, b, y = _first_line(path).split()
    line = _append(path, f"{b} {a} {y}")
    return path.name, line, f"the pair of templates {b} and {a} is listed again (first at line 1)"


def _self_pair(meta: Path) -> tuple[str, int, str]:
    path = meta / "ijbc_template_pair_label.txt"
    first = _first_line(path)
    a = first.split()[0]
    _replace(path, first, f"{a} {a} 1")
    return path.name, 1, f"template {a} is paired with itself"


def _in_both_galleries(meta: Path) -> tuple[str, int, str]:
    g1 = _first_line(meta / "ijbc_1N_gallery_G1.csv", skip_header=True)
    line = _append(meta / "ijbc_1N_gallery_G2.csv", g1)
    return ("ijbc_1N_gallery_G2.csv", line, f"template {g1.split(',')[0]} is also in "
            f"{meta / 'ijbc_1N_gallery_G1.csv'}:2; each template belongs to one 1:N list")


def _gallery_as_probe(meta: Path) -> tuple[str, int, str]:
    g1 = _first_line(meta / "ijbc_1N_gallery_G1.csv", skip_header=True)
    line = _append(meta / "ijbc_1N_probe_mixed.csv", g1)
    return ("ijbc_1N_probe_mixed.csv", line, f"template {g1.split(',')[0]} is also in "
            f"{meta / 'ijbc_1N_gallery_G1.csv'}:2")


def _two_subjects(meta: Path) -> tuple[str, int, str]:
    t, s, name = _first_line(meta / "ijbc_1N_gallery_G1.csv", skip_header=True).split(",")
    line = _append(meta / "ijbc_1N_probe_mixed.csv", f"{t},{int(s) + 100},{name}")
    return ("ijbc_1N_probe_mixed.csv", line, f"template {t} belongs to subject "
            f"{int(s) + 100} here and to subject {s} in {meta / 'ijbc_1N_gallery_G1.csv'}:2")


def _points(values: str, words: str):
    def edit(meta):
        _set_first_points(meta, values)
        return "ijbc_name_5pts_score.txt", 1, words
    return edit


def _crop_name(name, words):
    def edit(meta):
        outside = meta.parent.parent / "outside.png"  # a real image out of loose_crop/
        first = _first_line(meta / "ijbc_face_tid_mid.txt").split()[0]
        outside.write_bytes((meta.parent / "loose_crop" / first).read_bytes())
        shown = name.replace("OUTSIDE", str(outside))
        _rename_first_crop(meta, shown)
        return "ijbc_face_tid_mid.txt", 1, f"crop name {shown!r} {words}"
    return edit


LANDMARKS = " ".join(f"{v:.4f}" for v in (TEMPLATE + 3).ravel())
METADATA_CASES = {
    "duplicate crop line": _duplicate_crop,
    "duplicate pair lines (378 -> 756)": _doubled_pairs,
    "a pair listed again reversed": _reversed_pair,
    "a template paired with itself": _self_pair,
    "a template in G1 and G2": _in_both_galleries,
    "a gallery template also a probe": _gallery_as_probe,
    "a template with two subjects across files": _two_subjects,
    "degenerate landmarks": _points("50 60 " * 5 + "0.9", "the five landmarks lie within 1 "
                                    "pixel of their centre (degenerate: no alignment)"),
    "1e30 landmarks": _points("1e30 " + LANDMARKS.split(" ", 1)[1] + " 0.9",
                              "landmarks must be finite pixel positions within 100000"),
    "faceness 1e308": _points(LANDMARKS + " 1e308", "the faceness score must be in [0, 1]"),
    "crop name with ../": _crop_name("../../outside.png", "leaves loose_crop/"),
    "absolute crop name": _crop_name("OUTSIDE", "leaves loose_crop/"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_inconsistent_ijb_metadata_is_refused_naming_file_and_line(ijb_set, tmp_path, capsys,
                                                                   case):
    found = {}
    root = _variant(ijb_set["root"], tmp_path / "IJBC",
                    lambda meta: found.update(zip(("file", "line", "words"),
                                                  METADATA_CASES[case](meta))))
    out = tmp_path / "out"
    code = evaluate.main(["evaluate", f"--model={ijb_set['model_path']}", f"--ijb={root}",
                          f"--out_dir={out}", "--progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"error: {root / 'meta' / found['file']}:{found['line']}: {found['words']}" in err[0], \
        err
    assert not out.exists()


def test_a_template_whose_faceness_scores_are_all_0_is_named_as_such(ijb_set, tmp_path,
                                                                     capsys):
    """The cause of a template without a feature is read from its crops: all faceness
    scores 0 (--noijb_detector_score then evaluates it) vs a model giving NaN."""
    crops = ijb_set["meta"]["crops"]
    template = crops[0]["template"]
    own = {c["name"] for c in crops if c["template"] == template}

    def zero_faceness(meta):
        path = meta / "ijbc_name_5pts_score.txt"
        path.write_text("".join(
            line.rsplit(" ", 1)[0] + " 0\n" if line.split()[0] in own else line + "\n"
            for line in path.read_text().splitlines()))

    root = _variant(ijb_set["root"], tmp_path / "IJBC", zero_faceness)
    args = ["evaluate", f"--model={ijb_set['model_path']}", f"--ijb={root}", "--noijb_1n",
            "--progress=false"]
    assert evaluate.main([*args, f"--out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: template {template} has no feature: the faceness scores of all "
                   "its crops are 0 (--noijb_detector_score ignores them)"]
    assert evaluate.main([*args, f"--out_dir={tmp_path / 'plain'}",
                          "--noijb_detector_score"]) == 0
    from bridges import ijb

    features = np.ones((3, 2))
    features[1, 0] = np.nan
    with pytest.raises(InputError, match="template 7 has no feature: the model's features "
                                           "of its crops hold NaN or Inf"):
        ijb.template_features(features, np.array([5, 7, 7]), np.array([1, 2, 3]))
