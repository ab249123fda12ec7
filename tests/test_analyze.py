"""`python -m hyperface_jax.analyze`: dataset quality figures on sets whose answers are known."""

import json

import numpy as np
import pytest

from hyperface_jax import analyze
from hyperface_jax.jobs import analysis
from hyperface_jax.measure import quality
from tests.conftest import run_module


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _labelled(identities=30, per=10, d=64, spread=0.5, seed=0, centres=None):
    """Images of each identity: its centre plus Gaussian noise of about `spread` radians."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = _unit(rng.standard_normal((identities, d)))
    labels = np.repeat(np.arange(len(centres)), per)
    x = _unit(centres[labels] + spread * rng.standard_normal((len(labels), d)) / np.sqrt(d))
    return x, labels, centres


def _run(tmp_path, x, labels, *extra, reference=None, reference_labels=None, name="out"):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", labels)
    args = ["analyze", f"--embeddings={tmp_path}/x.npy", f"--labels={tmp_path}/l.npy",
            f"--out_dir={tmp_path / name}", "--progress=false", *extra]
    if reference is not None:
        np.save(tmp_path / "r.npy", reference)
        args.append(f"--reference={tmp_path}/r.npy")
    if reference_labels is not None:
        np.save(tmp_path / "rl.npy", reference_labels)
        args.append(f"--reference_labels={tmp_path}/rl.npy")
    assert analyze.main(args) == 0
    out = tmp_path / name
    return json.loads((out / "analysis.json").read_text()), out


def _dense(x, labels):
    x = x.astype(np.float64)
    s = x @ x.T
    iu = np.triu_indices(len(x), k=1)
    same = (labels[:, None] == labels[None, :])[iu]
    return s[iu][same], s[iu][~same]


def _leave_one_out(rows):
    """Direct definition: each row's cosine to the normalised sum of the other rows."""
    out = []
    for i in range(len(rows)):
        rest = np.delete(rows, i, axis=0).sum(axis=0)
        out.append(rows[i] @ rest / np.linalg.norm(rows[i]) / np.linalg.norm(rest))
    return np.array(out)


def _same_histogram(a, b):
    """Equal pair counts, each value in the same bin up to a float32 rounding across an edge."""
    assert a.sum() == b.sum()
    assert np.abs(np.cumsum(a) - np.cumsum(b)).max() <= 2


def _brute_eer(genuine, impostor):
    """min over thresholds of max(FAR, FRR), evaluating every score as a threshold."""
    t = np.concatenate([genuine, impostor])
    frr = np.searchsorted(np.sort(genuine), t, side="left") / len(genuine)  # genuine < t
    far = 1 - np.searchsorted(np.sort(impostor), t, side="left") / len(impostor)  # >= t
    return np.maximum(frr, far).min()


def test_planted_outlier_images_are_found_exactly(tmp_path):
    x, labels, centres = _labelled()
    rng = np.random.default_rng(5)
    planted = np.array([3, 47, 48, 160, 299])
    # Images of someone else entirely: a direction far from their identity's.
    x[planted] = _unit(-centres[labels[planted]] + rng.standard_normal((5, 64)) / 8)
    report, out = _run(tmp_path, x, labels)
    found = np.loadtxt(out / "intra_class_outliers.txt", dtype=int, ndmin=1)
    np.testing.assert_array_equal(found, planted)
    assert report["intra_class_noise"]["outlier_images"] == 5
    assert report["intra_class_noise"]["identities_with_outliers"] == 4
    assert report["inter_class_noise"]["identity_pairs"] == 0


@pytest.mark.parametrize("chunk_rows", [16, 4096])
def test_planted_outliers_in_small_classes_are_all_found_leaving_each_image_out(chunk_rows):
    # Tight classes of 3, 5, 10 and 50 images, each with one image of someone else
    # (orthogonal to the class centre). Inside its own mean such an image scores about
    # 1/sqrt(k) and hides in small classes; left out, it scores ~0 and the 0.3 rule finds it.
    rng = np.random.default_rng(11)
    d, sizes = 64, [3, 5, 10, 50] * 3
    centres = _unit(rng.standard_normal((len(sizes), d)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = _unit(centres[labels] + 0.3 * rng.standard_normal((len(labels), d)) / np.sqrt(d))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    planted = starts + rng.integers(0, sizes)
    other = rng.standard_normal((len(sizes), d))
    other -= np.einsum("ij,ij->i", other, centres)[:, None] * centres
    x[planted] = _unit(other)
    perm = rng.permutation(len(x))  # classes spread over the file
    x, labels = x[perm], labels[perm]
    planted = np.sort(np.argsort(perm)[planted])
    # The case exists: in classes of 3 the outlier's cosine to a mean that includes it
    # is above 0.3.
    for r in planted[np.asarray(sizes)[labels[planted]] == 3]:
        mean = x[labels == labels[r]].sum(axis=0)
        assert x[r] @ mean / np.linalg.norm(mean) > 0.3
    ids = quality.identity_figures(x, labels, outlier_threshold=0.3, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(ids.outlier_rows, planted)
    assert (ids.outliers == 1).all() and ids.unjudged == 0


def test_leave_one_out_figures_equal_a_direct_computation_and_skip_lone_images():
    x, labels, _ = _labelled(identities=6, per=4, d=8, spread=1.5, seed=12)
    labels = labels.copy()
    labels[5] = 99  # an identity of one image: nothing to compare it with
    ids = quality.identity_figures(x, labels, outlier_threshold=0.5, chunk_rows=5)
    expected_rows = []
    for k, value in enumerate(ids.labels):
        rows = np.flatnonzero(labels == value)
        if len(rows) == 1:
            assert np.isnan(ids.consistency[k])
            continue
        cos = _leave_one_out(x[rows].astype(np.float64))
        assert ids.consistency[k] == pytest.approx(cos.mean(), abs=1e-6)
        expected_rows += list(rows[cos < 0.5])
    assert 0 < len(expected_rows) < len(x) - 1  # the threshold splits this set
    np.testing.assert_array_equal(ids.outlier_rows, sorted(expected_rows))
    assert ids.unjudged == 1
    np.testing.assert_allclose(
        quality.leave_one_out_cosines(x[:3], np.repeat(x[:3].sum(0, keepdims=True), 3, 0)
                                      .astype(np.float64)),
        _leave_one_out(x[:3].astype(np.float64)), atol=1e-12)


def test_planted_duplicate_identities_are_inter_class_noise(tmp_path):
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((30, 64)))
    centres[19] = centres[7]  # one person filed under two labels
    centres[25] = _unit(centres[2:3] + 0.2 * rng.standard_normal((1, 64)) / 8)[0]  # near twin
    x, labels, _ = _labelled(centres=centres, seed=2)
    report, out = _run(tmp_path, x, labels)
    pairs = {(p["label_a"], p["label_b"]) for p in report["inter_class_noise"]["pairs"]}
    assert pairs == {(7, 19), (2, 25)}
    assert report["inter_class_noise"]["identities_involved"] == 4
    csv = np.genfromtxt(out / "identities.csv", delimiter=",", names=True)
    assert (csv["nearest_other_identity_cos"] > 0.7).sum() == 4


def test_eer_of_two_separated_gaussians_matches_brute_force(tmp_path):
    # Wide identities in 32-D: genuine and impostor cosines overlap by a few per cent.
    x, labels, _ = _labelled(identities=40, per=8, d=32, spread=1.1, seed=3)
    genuine, impostor = _dense(x, labels)
    report, _ = _run(tmp_path, x, labels, "--chunk_rows=50")
    expected = _brute_eer(genuine, impostor)
    assert 0.005 < expected < 0.3  # the test is about an overlap that exists
    assert report["eer"] == pytest.approx(expected, abs=2e-3)
    d_prime = abs(genuine.mean() - impostor.mean()) / np.sqrt(
        (genuine.var() + impostor.var()) / 2)
    assert report["d_prime"] == pytest.approx(d_prime, rel=1e-4)


@pytest.mark.parametrize("chunk_rows", [3, 16, 4096])
def test_blockwise_figures_equal_a_dense_computation(chunk_rows):
    rng = np.random.default_rng(4)
    x, labels, _ = _labelled(identities=12, per=6, d=16, spread=0.8, seed=4)
    labels = labels.copy()
    labels[:10] = 11  # one large identity (16 images) spread over the file
    perm = rng.permutation(len(x))
    x, labels = x[perm], labels[perm] * 7 + 3  # unsorted, non-contiguous label values
    genuine, impostor = _dense(x, labels)
    ids = quality.identity_figures(x, labels, chunk_rows=chunk_rows)
    expected = quality.Distribution()
    expected.add(genuine)
    _same_histogram(ids.genuine.counts, expected.counts)
    assert ids.genuine.mean == pytest.approx(genuine.mean(), abs=1e-6)
    assert ids.genuine.var == pytest.approx(genuine.var(), abs=1e-6)
    # Identity means and consistencies against the dense definition.
    for k, value in enumerate(ids.labels):
        rows = x[labels == value].astype(np.float64)
        mean = rows.sum(axis=0) / np.linalg.norm(rows.sum(axis=0))
        np.testing.assert_allclose(ids.means[k], mean, atol=1e-5)
        assert ids.consistency[k] == pytest.approx(_leave_one_out(rows).mean(), abs=1e-6)
    dist, used, exact = quality.impostor_distribution(x, labels, sample=1000, block=chunk_rows)
    assert exact and used == len(x)
    expected = quality.Distribution()
    expected.add(impostor)
    _same_histogram(dist.counts, expected.counts)
    # Sampled impostors: every different-label pair of the subset, nothing else.
    dist, used, exact = quality.impostor_distribution(x, labels, sample=30, seed=1,
                                                      block=chunk_rows)
    sub = np.sort(np.random.default_rng(1).choice(len(x), 30, replace=False))
    _, sub_impostor = _dense(x[sub], labels[sub])
    assert not exact and used == 30 and dist.n == len(sub_impostor)
    assert dist.mean == pytest.approx(sub_impostor.mean(), abs=1e-6)
    # Close pairs and nearest other identity.
    means = ids.means
    pairs, count, nearest = quality.close_pairs(means, 0.2, block=max(2, chunk_rows // 2))
    s = means.astype(np.float64) @ means.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_allclose(nearest, s.max(axis=1), atol=1e-5)
    assert count == int((np.triu(s, k=1) > 0.2).sum()) == len(pairs)


def test_planted_leaked_identities_are_found_and_clean_top_k_lists_exactly_them(tmp_path):
    reference, reference_labels, real_centres = _labelled(identities=20, per=5, d=64,
                                                          spread=0.4, seed=6)
    rng = np.random.default_rng(7)
    centres = _unit(rng.standard_normal((30, 64)))
    centres[3], centres[11] = real_centres[4], real_centres[9]  # two leaked identities
    x, labels, _ = _labelled(centres=centres, per=6, spread=0.4, seed=8)
    planted = np.flatnonzero(np.isin(labels, [3, 11]))
    report, out = _run(tmp_path, x, labels, f"--clean_top_k={len(planted)}",
                       reference=reference, reference_labels=reference_labels)
    leak = report["leakage"]
    assert {(i["label"], i["reference_label"]) for i in leak["identities"]} == {(3, 4), (11, 9)}
    assert leak["share"] == pytest.approx(2 / 30)
    dropped = np.loadtxt(out / "clean_drop.txt", dtype=int)
    assert sorted(dropped) == sorted(planted)
    # The listed pairs are each image's most similar reference image, most similar first.
    s = x.astype(np.float64) @ reference.T.astype(np.float64)
    cos = [p["cos"] for p in leak["top_k_pairs"]]
    assert cos == sorted(cos, reverse=True)
    for p in leak["top_k_pairs"]:
        assert p["reference_row"] == int(s[p["row"]].argmax())
        assert p["cos"] == pytest.approx(s[p["row"]].max(), abs=1e-5)


def test_clean_rule_pairs_is_appendix_d_top_pairs_and_images_is_top_distinct_images(tmp_path):
    """Two synthetic images each have several near-copies among the real images, so the
    top pairs over all pairs repeat them: the paper's rule drops fewer images than k,
    ours drops k distinct ones. Both recomputed from the dense similarity matrix."""
    rng = np.random.default_rng(11)
    x, labels, _ = _labelled(identities=12, per=5, d=32, spread=0.5, seed=12)
    reference = _unit(rng.standard_normal((40, 32)))
    for row, copies in ((7, 3), (31, 2)):  # near-copies of two synthetic images
        reference[:copies] = _unit(x[row] + 0.05 * rng.standard_normal((copies, 32)))
        reference = np.roll(reference, copies, axis=0)
    s = x.astype(np.float64) @ reference.T.astype(np.float64)
    k = 6
    order = np.argsort(-s, axis=None, kind="stable")[:k]
    pair_rows, pair_refs = np.unravel_index(order, s.shape)
    report, out = _run(tmp_path, x, labels, f"--clean_top_k={k}", "--clean_rule=pairs",
                       "--chunk_rows=16", reference=reference, name="pairs")
    listed = report["leakage"]["top_k_pairs"]
    assert [(p["row"], p["reference_row"]) for p in listed] == list(zip(pair_rows, pair_refs))
    assert [p["cos"] for p in listed] == pytest.approx(s[pair_rows, pair_refs], abs=1e-5)
    dropped = np.loadtxt(out / "clean_drop.txt", dtype=int, ndmin=1)
    assert sorted(dropped) == sorted(set(pair_rows)) and len(dropped) < k
    assert {7, 31} <= set(dropped.tolist())
    assert "appendix D" in report["leakage"]["clean_rule"]
    report, out = _run(tmp_path, x, labels, f"--clean_top_k={k}", reference=reference,
                       name="images")  # the default rule
    dropped = np.loadtxt(out / "clean_drop.txt", dtype=int)
    assert sorted(dropped) == sorted(np.argsort(-s.max(axis=1), kind="stable")[:k])
    assert len(set(dropped.tolist())) == k and report["leakage"]["clean_rule"].startswith("ours")


def _embed_listing(path, files):
    """The row -> file listing in the layout bridges.embed writes beside its embeddings."""
    path.write_text(json.dumps({"images": "dataset", "rows": files, "count": len(files),
                                "skipped": [{"path": "x/bad.png", "reason": "no face"}]}))


def test_drop_lists_the_files_of_planted_leaks_and_outliers_from_the_embed_listing(tmp_path):
    reference, reference_labels, real_centres = _labelled(identities=10, per=4, d=32,
                                                          spread=0.4, seed=13)
    rng = np.random.default_rng(14)
    centres = _unit(rng.standard_normal((12, 32)))
    centres[5] = real_centres[2]  # a leaked identity: all its 4 images
    x, labels, _ = _labelled(centres=centres, per=4, d=32, spread=0.4, seed=15)
    outlier = 41  # an image of someone else inside identity 10
    x[outlier] = _unit(-centres[10:11])[0]
    files = [f"{label:05d}/{k}.png" for label, k in zip(labels, np.arange(len(x)) % 4,
                                                        strict=True)]
    _embed_listing(tmp_path / "features.json", files)
    leaked_rows = np.flatnonzero(labels == 5)
    report, out = _run(tmp_path, x, labels, f"--files={tmp_path}/features.json",
                       "--drop=leaked_identities,intra_class_outliers",
                       reference=reference, reference_labels=reference_labels)
    expected = sorted([*leaked_rows, outlier])
    assert np.loadtxt(out / "drop_rows.txt", dtype=int).tolist() == expected
    assert (out / "drop.txt").read_text().splitlines() == [files[r] for r in expected]
    assert report["drop"]["per_rule"] == {"leaked_identities": 4, "intra_class_outliers": 1}
    # --clean_top_k alone drops its k images; a text listing (one path per line) works too.
    (tmp_path / "files.txt").write_text("".join(f + "\n" for f in files))
    _, out = _run(tmp_path, x, labels, f"--files={tmp_path}/files.txt", "--clean_top_k=4",
                  reference=reference, reference_labels=reference_labels, name="top")
    assert sorted((out / "drop.txt").read_text().splitlines()) == sorted(
        files[r] for r in leaked_rows)


def test_drop_files_listing_that_does_not_match_exits_2_and_writes_nothing(tmp_path, capsys):
    x, labels, _ = _labelled(identities=5, per=4, d=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", labels)
    np.save(tmp_path / "r.npy", x[:3])
    files = [f"{i}.png" for i in range(len(x))]
    _embed_listing(tmp_path / "short.json", files[:-1])
    _embed_listing(tmp_path / "twice.json", files[:-1] + files[:1])
    _embed_listing(tmp_path / "ok.json", files)
    (tmp_path / "norows.json").write_text('{"count": 20}')
    (tmp_path / "bad.json").write_text("{")
    base = [f"--embeddings={tmp_path}/x.npy", f"--labels={tmp_path}/l.npy"]
    top = [f"--reference={tmp_path}/r.npy", "--clean_top_k=2"]
    cases = [
        ([f"--files={tmp_path}/short.json", *top], "names 19 files for 20 embeddings rows"),
        ([f"--files={tmp_path}/twice.json", *top], "names '0.png' twice"),
        ([f"--files={tmp_path}/norows.json", *top], "no 'rows' list"),
        ([f"--files={tmp_path}/bad.json", *top], "not valid JSON"),
        ([f"--files={tmp_path}/missing.json", *top], "listing not found"),
        ([f"--files={tmp_path}/ok.json"], "give --clean_top_k or --drop"),
        (["--drop=everything"], "unknown rule 'everything'"),
        (["--drop=clean_top_k"], "needs --clean_top_k > 0"),
        (["--drop=leaked_identities"], "needs --reference"),
    ]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = analyze.main(["analyze", f"--out_dir={out}", "--progress=false", *base, *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (flags, err)
        assert not out.exists(), flags


def test_histogram_range_follows_the_data_not_the_whole_cosine_axis():
    genuine, impostor = quality.Distribution(), quality.Distribution()
    genuine.add(np.linspace(0.80, 0.86, 50))
    impostor.add(np.linspace(0.60, 0.70, 50))
    lo, hi = analysis.histogram_range(genuine.counts, impostor.counts)
    # 5 % of the 0.26 span each side (bin edges are 1e-4 apart).
    assert lo == pytest.approx(0.60 - 0.013, abs=2e-4) and hi == pytest.approx(0.86 + 0.013,
                                                                               abs=2e-4)
    wide = quality.Distribution()
    wide.add(np.array([-0.999, 0.999]))
    assert analysis.histogram_range(wide.counts) == (-1.0, 1.0)


def test_id_consistency_to_the_identity_embeddings_finds_images_of_the_wrong_identity(tmp_path):
    x, labels, centres = _labelled(identities=20, per=6, spread=0.6, seed=9)
    np.save(tmp_path / "refs.npy", centres)
    wrong = np.array([5, 50, 51])  # drawn from another identity's embedding
    x[wrong] = _unit(centres[(labels[wrong] + 7) % 20] + 0.1 * np.ones((3, 64)) / 8)
    report, out = _run(tmp_path, x, labels, f"--identity_embeddings={tmp_path}/refs.npy")
    ic = report["id_consistency_to_identity_embeddings"]
    per_image = np.einsum("ij,ij->i", x.astype(np.float64), centres[labels])
    assert ic["images_below_outlier_threshold"] == 3 == int((per_image < 0.3).sum())
    assert ic["per_image"]["mean"] == pytest.approx(per_image.mean(), abs=1e-5)
    csv = np.genfromtxt(out / "identities.csv", delimiter=",", names=True)
    expected = np.bincount(labels, weights=per_image) / 6
    np.testing.assert_allclose(csv["cos_to_identity_embedding"], expected, atol=1e-5)


def test_cli_end_to_end_writes_every_output(tmp_path):
    x, labels, _ = _labelled(identities=10, per=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", labels)
    r = run_module("hyperface_jax.analyze", f"--embeddings={tmp_path}/x.npy",
                   f"--labels={tmp_path}/l.npy", f"--out_dir={tmp_path}/o", "--progress=false")
    assert r.returncode == 0, r.stderr
    for name in ("analysis.json", "analysis.md", "analysis.png", "identities.csv",
                 "intra_class_outliers.txt"):
        assert (tmp_path / "o" / name).is_file(), name
    assert (tmp_path / "o" / "analysis.png").stat().st_size > 10_000
    assert "EER" in (tmp_path / "o" / "analysis.md").read_text()


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    x, labels, _ = _labelled(identities=5, per=4, d=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", labels)
    np.save(tmp_path / "short.npy", labels[:-1])
    np.save(tmp_path / "float_labels.npy", labels.astype(np.float32))
    nan = x.copy()
    nan[13, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    long = x.copy()
    long[6] *= 2
    np.save(tmp_path / "long.npy", long)
    zero = x.copy()
    zero[9] = 0
    np.save(tmp_path / "zero.npy", zero)
    np.save(tmp_path / "d16.npy", _unit(np.ones((3, 16))))
    (tmp_path / "garbage.npy").write_bytes(b"nope")
    np.save(tmp_path / "one_id.npy", np.zeros(20, np.int64))
    np.save(tmp_path / "singletons.npy", np.arange(20))
    np.save(tmp_path / "three.npy", x[:3])  # labels 0..4 need 5 rows
    e, lab = f"--embeddings={tmp_path}/x.npy", f"--labels={tmp_path}/l.npy"
    cases = [
        ([e, f"--labels={tmp_path}/short.npy"], "19 labels for 20 embedding rows"),
        ([e, f"--labels={tmp_path}/float_labels.npy"], "expected integers"),
        ([f"--embeddings={tmp_path}/nan.npy", lab], "NaN or Inf (first in row 13)"),
        ([f"--embeddings={tmp_path}/long.npy", lab], "row 6 is not a unit vector"),
        ([f"--embeddings={tmp_path}/zero.npy", lab], "row 9 is not a unit vector"),
        ([f"--embeddings={tmp_path}/missing.npy", lab], "embeddings file not found"),
        ([f"--embeddings={tmp_path}/garbage.npy", lab], "not a readable .npy"),
        ([e, lab, f"--reference={tmp_path}/d16.npy"], "dimension mismatch"),
        ([e, lab, f"--reference={tmp_path}/long.npy"], "reference file"),
        ([e, lab, "--clean_top_k=5"], "--clean_top_k needs --reference"),
        ([e, lab, f"--identity_embeddings={tmp_path}/three.npy"], "has 3 rows"),
        ([e, lab, f"--identity_embeddings={tmp_path}/d16.npy"], "dimension mismatch"),
        ([e], "--labels is required"),
        ([e, f"--labels={tmp_path}/one_id.npy"], "single identity"),
        ([e, f"--labels={tmp_path}/singletons.npy"], "no genuine pairs"),
        ([e, lab, "--outlier_threshold=2"], "--outlier_threshold"),
        ([e, lab, "--no_such_flag=1"], "no_such_flag"),
    ]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = analyze.main(["analyze", f"--out_dir={out}", "--progress=false", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (flags, err)
        assert not out.exists(), flags
