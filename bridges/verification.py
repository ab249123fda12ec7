"""Verification figures: the 10-fold protocol, TAR at a fixed FAR, ROC, rankings.

`ten_fold_accuracy` is insightface's protocol (eval/verification.py `calculate_roc`) on
similarity scores: pairs in their file order cut into 10 consecutive folds (sklearn KFold,
no shuffle); for each fold the threshold with the best accuracy on the other 9 folds
(first best on the grid) is applied to it. For cosine scores the grid is insightface's,
distance thresholds 0, 0.01, ..., 3.99 on unit vectors, i.e. cosine 1 - t / 2; other
scores (group-aware similarity) use 400 equal steps over their range.
"""

import numpy as np

COSINE_THRESHOLDS = 1.0 - np.arange(0, 4, 0.01) / 2.0


def default_thresholds(scores) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.min() >= -1.0 - 1e-6 and scores.max() <= 1.0 + 1e-6:
        return COSINE_THRESHOLDS
    return np.linspace(scores.min(), scores.max(), 400, endpoint=False)


def ten_fold_accuracy(scores, issame, thresholds=None, folds: int = 10) -> dict:
    """{"accuracies": (folds,), "mean", "std", "thresholds": best per fold}; a pair is
    predicted "same" when its score is above the threshold."""
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame, bool)
    if scores.shape != issame.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and issame {issame.shape} must be equal 1-D")
    if len(scores) < folds:
        raise ValueError(f"{len(scores)} pairs cannot be split into {folds} folds")
    thresholds = default_thresholds(scores) if thresholds is None else np.asarray(thresholds)
    # correct[t, i]: pair i is classified right at threshold t.
    correct = (scores[None, :] > thresholds[:, None]) == issame[None, :]
    fold_of = _fold_indices(len(scores), folds)
    accuracies, chosen = np.zeros(folds), np.zeros(folds)
    for k in range(folds):
        test = fold_of == k
        best = int(np.argmax(correct[:, ~test].mean(axis=1)))
        chosen[k] = thresholds[best]
        accuracies[k] = correct[best, test].mean()
    return {"accuracies": accuracies, "mean": float(accuracies.mean()),
            "std": float(accuracies.std()), "thresholds": chosen}


def _fold_indices(n: int, folds: int) -> np.ndarray:
    """sklearn KFold(n_splits=folds, shuffle=False): the first n % folds folds one longer."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def tar_at_far(scores, issame, far: float = 1e-3) -> dict:
    """True accept rate at the most lenient threshold whose false accept rate over all
    impostor pairs is at most `far` (pooled over the set, no folds).

    With N impostor scores sorted from high to low, the threshold t is the
    (floor(far * N) + 1)-th highest; a pair is accepted when its score is strictly above
    t. Impostors tied with t are rejected, so the achieved FAR is <= far, and any lower
    threshold would accept more than floor(far * N) impostors; genuine pairs tied with t
    are rejected too. With floor(far * N) = 0, t is the highest impostor score."""
    return tar_at_fars(scores, issame, [far])[0]


def tar_at_fars(scores, issame, fars) -> list[dict]:
    """`tar_at_far` for several FARs, sorting the scores once (IJB-C: 15.6 M impostors)."""
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame, bool)
    impostor = np.sort(scores[~issame])[::-1]
    genuine = np.sort(scores[issame])
    if len(impostor) == 0 or len(genuine) == 0:
        return [{"tar": float("nan"), "far": float("nan"), "threshold": float("nan")}
                for _ in fars]
    rows = []
    for far in fars:
        allowed = int(np.floor(far * len(impostor)))  # impostors that may score above
        threshold = impostor[allowed] if allowed < len(impostor) else -np.inf
        above = len(genuine) - np.searchsorted(genuine, threshold, side="right")
        rows.append({"tar": float(above / len(genuine)),
                     "far": float(np.sum(impostor > threshold) / len(impostor)),
                     "threshold": float(threshold)})
    return rows


def roc(scores, issame) -> tuple[np.ndarray, np.ndarray]:
    """(false accept rates, true accept rates) over all thresholds."""
    from sklearn.metrics import roc_curve

    far, tar, _ = roc_curve(np.asarray(issame, int), np.asarray(scores, np.float64))
    return far, tar


def rank_models(table: dict[str, dict[str, float]]) -> list[dict]:
    """Rank models by mean accuracy over sets and by Borda count.

    `table[model][set]` is an accuracy. Borda: on each set a model scores the number of
    models it beats (ties share the average), summed over sets. Returns rows sorted by
    Borda points, then mean accuracy: {"model", "mean", "borda", "rank_mean", "rank_borda"}.
    """
    models = list(table)
    sets = sorted({s for row in table.values() for s in row})
    missing = [(m, s) for m in models for s in sets if s not in table[m]]
    if missing:
        raise ValueError(f"model {missing[0][0]} has no result on {missing[0][1]}")
    borda = dict.fromkeys(models, 0.0)
    for s in sets:
        for m in models:
            others = [table[o][s] for o in models if o != m]
            borda[m] += sum(1.0 if table[m][s] > v else 0.5 if table[m][s] == v else 0.0
                            for v in others)
    means = {m: float(np.mean([table[m][s] for s in sets])) for m in models}
    rows = [{"model": m, "mean": means[m], "borda": borda[m]} for m in models]
    by_mean = sorted(models, key=lambda m: -means[m])
    by_borda = sorted(models, key=lambda m: (-borda[m], -means[m]))
    for row in rows:
        row["rank_mean"] = 1 + by_mean.index(row["model"])
        row["rank_borda"] = 1 + by_borda.index(row["model"])
    return sorted(rows, key=lambda r: r["rank_borda"])
