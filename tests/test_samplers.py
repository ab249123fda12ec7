"""Identity samplers (random margin, DiffFR interpolation + ID-NMS, our perturbed-gallery
sampler) and the `python -m hyperface_jax.sample` CLI."""

import json

import numpy as np
import pytest

from hyperface_jax import sample
from hyperface_jax.baselines import samplers
from hyperface_jax.engine import search
from hyperface_jax.jobs import sampling


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _labelled_gallery(identities=40, per=8, d=64, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((identities, d)))
    labels = np.repeat(np.arange(identities), per)
    x = _unit(centres[labels] + spread * rng.standard_normal((len(labels), d)) / np.sqrt(d))
    return x, labels


def _max_offdiag(x):
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    return s.max()


def _naive_nms(candidates, threshold, forbidden=None, n=None):
    kept = []
    for i, c in enumerate(candidates):
        if forbidden is not None and (forbidden @ c).max() > threshold:
            continue
        if kept and (candidates[kept] @ c).max() > threshold:
            continue
        kept.append(i)
        if n is not None and len(kept) == n:
            break
    return kept


@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_batched_greedy_acceptance_equals_the_one_by_one_scan(chunk):
    rng = np.random.default_rng(1)
    candidates = _unit(rng.standard_normal((500, 10)))
    forbidden = _unit(rng.standard_normal((5, 10)))
    expected = _naive_nms(candidates, 0.5, forbidden, n=40)
    acceptor = samplers.GreedyAcceptor(40, 10, threshold=0.5, forbidden=forbidden)
    got = []
    for start in range(0, 500, chunk):
        if acceptor.full:
            break
        got += list(start + acceptor.offer(candidates[start:start + chunk]))
    assert got == expected
    assert acceptor.seen == expected[-1] + 1  # draws stop at the n-th acceptance
    np.testing.assert_array_equal(acceptor.accepted, candidates[expected])
    assert acceptor.rejected_forbidden + acceptor.rejected_accepted + 40 == acceptor.seen


def test_random_margin_respects_its_margin_and_counts_draws():
    x, info = samplers.random_margin(300, 12, min_distance=0.3, seed=3)
    assert x.shape == (300, 12) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert _max_offdiag(x) <= 0.7 + 1e-6
    # In 12-D a 0.3 margin rejects a fair share of draws, and the report says so.
    assert info["draws"] > 300 and info["rejected_near_accepted"] == info["draws"] - 300


def test_random_margin_reads_the_margin_as_appendix_e_or_as_the_rebuttal():
    """Appendix E: 1 - cos >= 0.3 (cos <= 0.7); the rebuttal: cos <= 0.3. Same draws, so
    the rebuttal's reading at 0.7 is appendix E's at 0.3, row for row."""
    x_e, info_e = samplers.random_margin(100, 32, seed=1)
    x_r, info_r = samplers.random_margin(100, 32, seed=1, margin_reading="rebuttal")
    assert 0.3 < _max_offdiag(x_e) <= 0.7 + 1e-6  # appendix E's rule does not bind here
    assert _max_offdiag(x_r) <= 0.3 + 1e-6 and info_r["draws"] > 100
    assert (info_e["margin_reading"], info_e["max_cos_allowed"]) == ("appendix_e", 0.7)
    assert (info_r["margin_reading"], info_r["max_cos_allowed"]) == ("rebuttal", 0.3)
    same, _ = samplers.random_margin(100, 32, seed=1, margin_reading="rebuttal",
                                     max_pair_similarity=0.7)
    np.testing.assert_array_equal(same, x_e)
    with pytest.raises(samplers.InputError, match="--margin_reading"):
        samplers.random_margin(10, 4, margin_reading="review")


def test_random_margin_fails_clearly_when_n_is_out_of_reach():
    with pytest.raises(samplers.InputError, match=r"only \d+ of 500 identities .*max_draws=5000"):
        samplers.random_margin(500, 4, min_distance=0.3, max_draws=5000)


def test_variance_based_interpolation_cuts_the_arc_in_the_ratio_of_the_spreads():
    a, b = np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]])
    for sa, sb in ((0.1, 0.1), (0.3, 0.1), (0.05, 0.2)):
        p = samplers.interpolate_pair(a, b, np.array([sa]), np.array([sb]))[0]
        angle_a = np.degrees(np.arccos(p @ a[0]))
        assert angle_a == pytest.approx(90 * sa / (sa + sb), abs=1e-3)
        assert np.linalg.norm(p) == pytest.approx(1, abs=1e-6)


def test_id_nms_output_respects_its_threshold_against_real_and_accepted():
    gallery, labels = _labelled_gallery()
    threshold = 0.8
    x, info = samplers.diffr(200, gallery, labels, nms_threshold=threshold, seed=0)
    ids = samplers.identity_statistics(gallery, labels)
    assert (x @ ids.means.T).max() <= threshold + 1e-6
    assert _max_offdiag(x) <= threshold + 1e-6
    # Midpoints of 64-D identities sit near 0.707 of both ends: some are refused as too
    # close to a real identity, which the report counts.
    assert info["rejected_near_real"] > 0 and info["accepted"] == 200


def test_interpolating_opposite_identities_gives_no_identity():
    # Two antipodal identities of equal spread: their "interpolation" is the zero vector,
    # which has no direction and must never be accepted as an identity.
    d = 8
    centre = np.eye(d, dtype=np.float32)[0]
    rng = np.random.default_rng(0)
    gallery = np.concatenate([_unit(centre + 0.01 * rng.standard_normal((4, d))),
                              _unit(-centre + 0.01 * rng.standard_normal((4, d)))])
    gallery = np.concatenate([gallery, _unit(rng.standard_normal((6, d)))])
    labels = np.array([0] * 4 + [1] * 4 + [2, 3, 4, 5, 6, 7])
    ids = samplers.identity_statistics(gallery, labels)
    ids_spreads = ids.spreads.copy()
    ids_spreads[1] = ids_spreads[0]
    p = samplers.interpolate_pair(ids.means[:1], -ids.means[:1], ids_spreads[:1],
                                  ids_spreads[:1])
    assert np.linalg.norm(p) < 1e-3  # the case exists
    acceptor = samplers.GreedyAcceptor(3, d, threshold=0.9)
    taken = acceptor.offer(np.concatenate([p, np.eye(d, dtype=np.float32)[1:4]]))
    assert list(taken) == [1, 2, 3] and acceptor.rejected_degenerate == 1
    x, info = samplers.diffr(5, gallery, labels, nms_threshold=0.95, seed=0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)


def test_perturbed_gallery_keeps_its_source_band_and_mutual_similarity():
    gallery, _ = _labelled_gallery(identities=30, per=4, d=256)
    x, info = samplers.perturbed_gallery(100, gallery, perturbation=1.0, min_source_similarity=0.3,
                                max_source_similarity=0.7, max_similarity=0.4, seed=2)
    assert _max_offdiag(x) <= 0.4 + 1e-6
    nearest_gallery = (x @ gallery.T).max(axis=1)
    assert nearest_gallery.min() >= 0.3 - 1e-6  # at least its source is that close
    assert info["rejected_source_band"] > 0


def test_sample_cli_writes_embeddings_and_the_pack_figures(tmp_path):
    gallery, labels = _labelled_gallery()
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "l.npy", labels)
    for method in ("random_margin", "diffr", "perturbed_gallery"):
        out = tmp_path / method
        code = sample.main(["sample", f"--method={method}", "--num_identities=60",
                            f"--gallery={tmp_path}/g.npy", f"--gallery_labels={tmp_path}/l.npy",
                            "--max_similarity=0.5", f"--out_dir={out}"])
        assert code == 0, method
        x = np.load(out / "embeddings.npy")
        report = json.loads((out / "report.json").read_text())
        assert x.shape == (60, 64) and report["method"] == method
        assert report["figures"]["max_cos"] == pytest.approx(_max_offdiag(x), abs=1e-5)
        near = (x @ gallery.T).max(axis=1).mean()
        assert report["figures"]["mean_gallery_cos"] == pytest.approx(near, abs=1e-5)
        # What the paper leaves open is named, with this run's value for each flag.
        choices = {c["name"]: c for c in report["choices"]}
        assert choices["max_draws"]["value"] == 10_000_000
        assert all("not in the paper" in c["why"] or c["name"] == "method"
                   for c in report["choices"]), method
        assert json.loads(json.dumps(report)) == report
    assert choices["max_similarity"]["value"] == 0.5  # perturbed_gallery's flag as given
    diffr = json.loads((tmp_path / "diffr" / "report.json").read_text())
    assert {c["name"]: c["value"] for c in diffr["choices"]}["nms_threshold"] == 0.7
    margin = json.loads((tmp_path / "random_margin" / "report.json").read_text())
    assert {p["name"]: p["value"] for p in margin["paper"]}["min_distance"] == 0.3
    assert "appendix E" in {p["name"]: p["source"] for p in margin["paper"]}["min_distance"]
    # The rebuttal's reading names its own source and number.
    out = tmp_path / "rebuttal"
    assert sample.main(["sample", "--method=random_margin", "--num_identities=60", "--dim=64",
                        "--margin_reading=rebuttal", f"--out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    stated = {p["name"]: p for p in report["paper"]}
    assert "min_distance" not in stated and stated["max_pair_similarity"]["value"] == 0.3
    assert "rebuttal" in stated["max_pair_similarity"]["source"]
    assert report["figures"]["max_cos"] <= 0.3 + 1e-6
    assert report["sampler"]["margin_reading"] == "rebuttal"
    assert report["packing_objective"]["reading"] == "ours"  # the figures' --packing_reduce


def test_sample_cli_hyperface_runs_the_packing_engine(tmp_path):
    out = tmp_path / "hf"
    code = sample.main(["sample", "--method=hyperface", "--num_identities=30", "--dim=8",
                        "--alpha=0", "--steps=20", "--log_every=10", "--progress=false",
                        f"--out_dir={out}"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "hyperface" and report["steps"] == 20
    assert {c["name"]: c["value"] for c in report["choices"]}["packing_reduce"] == "mean"
    # report.json names the objective that ran and whose it is.
    assert report["packing_objective"] == {
        "packing_reduce": "mean", "reading": "ours",
        "name": "mean nearest-neighbour (our reading of Algorithm 1's loss)",
        "source": search.PACKING_OBJECTIVES["mean"]["source"]}
    assert search.PACKING_OBJECTIVES["max"]["reading"] == "the paper's statement"
    assert report["figures"]["max_cos"] < report["initial_figures"]["max_cos"]


def test_sample_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    gallery, labels = _labelled_gallery(identities=5, per=4, d=8)
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "short.npy", labels[:-1])
    nan = gallery.copy()
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases = [
        (["--method=diffr", f"--gallery={tmp_path}/g.npy",
          f"--gallery_labels={tmp_path}/short.npy"],
         "19 labels for 20 embedding rows"),
        (["--method=diffr", f"--gallery={tmp_path}/g.npy"], "needs --gallery_labels"),
        (["--method=perturbed_gallery"], "needs a --gallery"),
        (["--method=perturbed_gallery", f"--gallery={tmp_path}/nan.npy"], "NaN or Inf"),
        (["--method=vec2face"], "renamed --method=perturbed_gallery"),
        (["--method=random_margin", "--dim=0"], "--dim must be >= 2, got 0"),
        (["--method=random_margin", "--dim=1"], "--dim must be >= 2, got 1"),
        (["--method=random_margin", "--dim=4", "--num_identities=1"],
         "--num_identities must be >= 2"),
        (["--method=random_margin", "--seed=-1"], "--seed must be in [0, 4294967295]"),
        (["--method=random_margin", "--min_distance=nan"], "--min_distance"),
        (["--method=random_margin", "--nms_threshold=nan"], "--nms_threshold"),
        (["--method=random_margin", "--perturbation=inf"], "--perturbation"),
        (["--method=random_margin", "--max_similarity=1.5"], "--max_similarity"),
        (["--method=random_margin", "--max_source_similarity=0.1"], "--min_source_similarity"),
        (["--method=random_margin", "--max_draws=3"], "--max_draws=3 is below"),
        (["--method=hyperface", "--max_draws=3"], "--max_draws=3 is below"),
        (["--method=random_margin", "--packing_reduce=median"], "--packing_reduce"),
        (["--method=perturbed_gallery", f"--gallery={tmp_path}/g.npy", "--alpha=nan"],
         "--alpha must be a finite number"),
        (["--method=random_margin", "--dim=3", "--num_identities=200", "--max_draws=1000"],
         "only"),
        (["--method=voronoi"], "unknown --method 'voronoi'"),
        (["--method=random_margin", "--min_distance=3"], "--min_distance"),
    ]
    (tmp_path / "a_file").write_text("")
    cases += [(["--method=random_margin", f"--out_dir={tmp_path}/a_file"], "not a folder"),
              (["--method=random_margin", f"--out_dir={tmp_path}/a_file/x"], "not a folder"),
              (["--method=random_margin", "--out_dir=/proc/no/such"],
               "cannot be used as an output folder")]
    for i, (flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = sample.main(["sample", f"--out_dir={out}", "--num_identities=10", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, flags
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (flags, err)
        assert not out.exists(), flags


def test_rows_are_checked_before_they_are_written():
    x = _unit(np.random.default_rng(0).standard_normal((5, 4)))
    sampling.check_rows(x, 5, 4)
    for bad, words in ((np.where(np.arange(5)[:, None] == 2, 0, x), "non-unit row 2"),
                       (np.where(np.arange(5)[:, None] == 1, np.nan, x), "non-finite"),
                       (x[:4], "shape")):
        with pytest.raises(RuntimeError, match=words):
            sampling.check_rows(bad.astype(np.float32), 5, 4)
