"""Identity samplers: the seeds' baselines for placing synthetic identities on the sphere.

Each sampler returns `(embeddings, info)`: an (n, d) float32 array of unit rows and a dict
of plain figures about the draw (draws taken, acceptance rate, ...). All are numpy, driven
by one `numpy.random.Generator`, so the same seed gives the same rows.

- `random_margin` (HyperFace appendix E): random unit vectors, each kept only when it is
  at a margin from every kept one, read two ways (`MARGIN_READINGS`): appendix E's "at
  least 0.3 cosine distance" (1 - cos >= `min_distance`, 0.3) or the authors' rebuttal
  in the public review, "the similarity of each pair is below a certain threshold (0.3)"
  (cos <= `max_pair_similarity`, 0.3).
- `diffr` (DiffFR, "Complete the Feature Space"): fictional identities between two real
  identities of a labelled gallery by variance-based interpolation (rule in
  `interpolate_pair`, ours: the supplement states the aim, not the formula), filtered by
  ID-NMS against the real identities and the accepted ones (threshold: ours).
- `perturbed_gallery` (ours, *inspired by* Vec2Face's "loosely constrained vectors"; the
  Vec2Face appendix does not describe its identity sampler): gallery embeddings perturbed
  with Gaussian noise, kept when the cosine to their source lies in a band and the cosine
  to every accepted one is at most `max_similarity`. It was called `vec2face`; that name
  is refused (`RENAMED`) so no figure of ours is mistaken for Vec2Face's method.

`hyperface` (the packing engine) is in `sample.py`, which calls `packing.run`.
What each paper specifies and what is our choice is listed per method in `PAPER` and
`CHOICES` (copied into every `report.json` by `sample.py`).

Every acceptance rule here is the same greedy scan (`GreedyAcceptor`): candidates are
taken in order, one is accepted when its cosine to every row of a fixed "forbidden" set
(e.g. the real identities) is at most `forbidden_threshold` and to every accepted row at
most `threshold`. Candidates come in batches; a batch is first checked against the
accepted and forbidden rows with matrix products (blockwise, `BLOCK` rows at a time),
then scanned in order against the batch's earlier acceptances, so the result equals the
one-by-one scan exactly. A candidate that is not a unit vector (e.g. the interpolation of
two opposite identities, which has no direction) is never accepted.
"""

import dataclasses

import numpy as np

from hyperface_jax.io import files
from hyperface_jax.io.files import InputError

METHODS = ("random_margin", "diffr", "perturbed_gallery", "hyperface")
NEEDS_GALLERY = ("diffr", "perturbed_gallery")
# Old names refused with a pointer to the new one (a report must not carry the old label).
RENAMED = {"vec2face": "perturbed_gallery"}
BLOCK = 4096  # rows per block of the similarity products (memory ~ BLOCK x BLOCK floats)
UNIT_TOLERANCE = 1e-3  # candidates whose norm is further from 1 are degenerate

NOT_IN_PAPER = "our choice, not in the paper"

# The two readings of random_margin's rule, each by its source: (flag of its number, the
# source's number, the source and what it says, the cosine threshold of the flag's value).
MARGIN_READINGS = {
    "appendix_e": ("min_distance", 0.3,
                   "HyperFace appendix E: selected points have at least 0.3 cosine distance "
                   "(read as 1 - cos >= 0.3, i.e. cos <= 0.7)", lambda v: 1.0 - v),
    "rebuttal": ("max_pair_similarity", 0.3,
                 "the authors' rebuttal in HyperFace's public review (reply on the "
                 "random-embedding ablation): the similarity of each pair is below a "
                 "certain threshold (0.3), i.e. cos <= 0.3", lambda v: v),
}

# What the seed papers state for each baseline: (name, value, where). A flag among these
# defaults to the paper's value.
PAPER = {
    "random_margin": [
        ("points", "random points on the hypersphere, used as reference embeddings",
         "HyperFace appendix E"),
        # + the margin of the run's --margin_reading (MARGIN_READINGS), by its source
    ],
    "diffr": [
        ("interpolation", "a fictional identity between the features of two real identities, "
                          "placed by their variances so that it is not too similar to the one "
                          "of higher variance", "DiffFR supplement, section A"),
        ("id_nms", "a fictional identity is discarded when it is too similar to an existing "
                   "(real) identity or an already selected one", "DiffFR supplement, section B"),
    ],
    "perturbed_gallery": [],
    "hyperface": [
        ("packing", "maximise the smallest distance between reference embeddings: the worst "
                    "pair (Eq. 1, Tammes), --objective=max --packing_reduce=max",
         "HyperFace Eq. 1 as stated in words"),
        ("optimizer", "adam", "HyperFace Algorithm 1 (RMSprop and AdamW compared in appendix E)"),
    ],
}

# What each baseline leaves open and we decided: (name, fixed value or None for a flag, why).
CHOICES = {
    "random_margin": [
        ("distribution", "uniform on the sphere (normalised Gaussian draws)",
         f"the paper says 'random points'; uniform is our reading ({NOT_IN_PAPER})"),
        ("margin_reading", None, "which source's margin rule: appendix_e (1 - cos >= "
                                 "--min_distance) or rebuttal (cos <= --max_pair_similarity); "
                                 f"the default appendix_e is {NOT_IN_PAPER}"),
        ("cosine_distance", "1 - cos", f"our reading of 'cosine distance' ({NOT_IN_PAPER})"),
        ("selection", "greedy in draw order: a draw is kept when it is at the margin from "
                      "every kept point", NOT_IN_PAPER),
        ("max_draws", None, f"budget of candidate draws ({NOT_IN_PAPER})"),
    ],
    "diffr": [
        ("nms_threshold", None, "ID-NMS cosine threshold, one for real and selected identities "
                                f"({NOT_IN_PAPER}: the supplement gives no number; default 0.7 "
                                "= the same-person rule analyze uses)"),
        ("identity_feature", "unit mean of the identity's gallery rows", NOT_IN_PAPER),
        ("variance", "mean cosine distance 1 - cos(x, mean) of the identity's rows",
         NOT_IN_PAPER),
        ("interpolation_rule", "great-circle point at t = s_a / (s_a + s_b) of the angle from "
                               "mean a to mean b", f"{NOT_IN_PAPER}: the supplement states the "
                                                  "aim, not the formula"),
        ("pairs", "uniform random pairs of distinct real identities", NOT_IN_PAPER),
        ("nms_order", "draw order", NOT_IN_PAPER),
        ("max_draws", None, f"budget of candidate draws ({NOT_IN_PAPER})"),
    ],
    "perturbed_gallery": [
        ("method", "ours, inspired by Vec2Face's loosely constrained vectors",
         "the Vec2Face appendix does not describe its identity sampler; its 0.3 and 0.7 are "
         "the thresholds of its dataset noise analysis (A.3) and leakage rule (A.8)"),
        ("perturbation", None, NOT_IN_PAPER),
        ("min_source_similarity", None, NOT_IN_PAPER),
        ("max_source_similarity", None, NOT_IN_PAPER),
        ("max_similarity", None, NOT_IN_PAPER),
        ("sources", "uniform random gallery rows", NOT_IN_PAPER),
        ("max_draws", None, f"budget of candidate draws ({NOT_IN_PAPER})"),
    ],
    "hyperface": [
        ("packing_reduce", None, "'mean' = mean nearest-neighbour (our reading of Algorithm "
                                 "1's loss); 'max' = worst pair (Eq. 1, Tammes), the paper's "
                                 "statement"),
        ("init", None, "the paper starts from embeddings of separately generated faces "
                       "(--init=FILE.npy); 'random' and 'gallery' are ours"),
    ],
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (float32), overflow-safe: `files.unit_rows`."""
    return files.unit_rows(x)[0]


def max_similarity(x: np.ndarray, y: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """For each row of `x`, the largest inner product with a row of `y` (-inf if y is empty)."""
    out = np.full(len(x), -np.inf, np.float32)
    for start in range(0, len(y), block):
        s = x @ y[start:start + block].T
        np.maximum(out, s.max(axis=1), out=out)
    return out


class GreedyAcceptor:
    """One-by-one ID-NMS over batches of candidates; see the module docstring."""

    def __init__(self, n: int, d: int, threshold: float, forbidden: np.ndarray | None = None,
                 forbidden_threshold: float | None = None):
        self.n = n
        self.threshold = float(threshold)
        self.forbidden = forbidden
        self.forbidden_threshold = float(
            threshold if forbidden_threshold is None else forbidden_threshold)
        self.accepted = np.empty((n, d), np.float32)
        self.count = 0
        self.seen = 0
        self.rejected_forbidden = 0
        self.rejected_accepted = 0
        self.rejected_degenerate = 0

    @property
    def full(self) -> bool:
        return self.count >= self.n

    def offer(self, candidates: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Scan `candidates` in order (those with `keep` False are skipped and count as
        seen); returns the indices accepted. Stops once `n` rows are accepted; the
        candidates after that one are not counted as seen."""
        candidates = np.asarray(candidates, np.float32)
        ok = np.ones(len(candidates), bool) if keep is None else np.asarray(keep, bool).copy()
        unit = np.isfinite(candidates).all(axis=1)
        unit[unit] = np.abs(np.linalg.norm(candidates[unit], axis=1) - 1) <= UNIT_TOLERANCE
        degenerate = ok & ~unit
        ok &= unit
        near_real = np.zeros(len(candidates), bool)
        if self.forbidden is not None and len(self.forbidden):
            near_real = ok & (max_similarity(candidates, self.forbidden) > self.forbidden_threshold)
            ok &= ~near_real
        if self.count:
            ok &= max_similarity(candidates, self.accepted[:self.count]) <= self.threshold
        alive = np.flatnonzero(ok)
        gram = candidates[alive] @ candidates[alive].T
        free = np.ones(len(alive), bool)
        taken = []
        last = len(candidates) - 1
        for k, i in enumerate(alive):
            if not free[k]:
                continue
            taken.append(i)
            free &= gram[k] <= self.threshold
            if self.count + len(taken) >= self.n:
                last = int(i)
                break
        taken = np.asarray(taken, np.int64)
        considered = slice(0, last + 1)
        offered = int((np.ones(len(candidates), bool) if keep is None else keep)[considered].sum())
        self.rejected_forbidden += int(near_real[considered].sum())
        self.rejected_degenerate += int(degenerate[considered].sum())
        self.rejected_accepted += (offered - int(near_real[considered].sum())
                                   - int(degenerate[considered].sum()) - len(taken))
        self.accepted[self.count:self.count + len(taken)] = candidates[taken]
        self.count += len(taken)
        self.seen += last + 1
        return taken


def check_parameters(n: int, d: int | None = None, **values) -> None:
    """Raise InputError (one line naming the flag) for the first parameter out of range.

    Checks every parameter it is given, whatever the method: the samplers call it with
    theirs, `sample.py` with every flag before anything is drawn or written."""
    if n < 2:
        raise InputError(f"need at least 2 identities, got --num_identities={n}")
    if d is not None and d < 2:
        raise InputError(f"--dim must be >= 2, got {d}")
    if "seed" in values and values["seed"] < 0:
        raise InputError(f"--seed must be >= 0 for the samplers, got {values['seed']}")
    if "max_draws" in values and values["max_draws"] < n:
        raise InputError(f"--max_draws={values['max_draws']} is below --num_identities={n}")
    if "min_distance" in values and not 0 <= values["min_distance"] <= 2:
        raise InputError(f"--min_distance must be in [0, 2], got {values['min_distance']}")
    if "margin_reading" in values and values["margin_reading"] not in MARGIN_READINGS:
        raise InputError(f"unknown --margin_reading {values['margin_reading']!r}; choose one "
                         f"of {', '.join(MARGIN_READINGS)}")
    for name in ("nms_threshold", "max_similarity", "max_pair_similarity"):
        if name in values and not -1 <= values[name] <= 1:
            raise InputError(f"--{name} must be in [-1, 1], got {values[name]}")
    if "perturbation" in values and not 0 < values["perturbation"] < np.inf:
        raise InputError(f"--perturbation must be positive and finite, got "
                         f"{values['perturbation']}")
    low, high = values.get("min_source_similarity"), values.get("max_source_similarity")
    if low is not None and high is not None and not -1 <= low <= high <= 1:
        raise InputError("need -1 <= --min_source_similarity <= --max_source_similarity <= 1, "
                         f"got {low} and {high}")


def _unreachable(method: str, acceptor: GreedyAcceptor, max_draws: int, hint: str) -> InputError:
    return InputError(
        f"{method}: only {acceptor.count} of {acceptor.n} identities accepted within "
        f"--max_draws={max_draws} candidates; {hint}")


def _info(acceptor: GreedyAcceptor, **extra) -> dict:
    return {"draws": acceptor.seen, "accepted": acceptor.count,
            "acceptance_rate": acceptor.count / max(1, acceptor.seen),
            "rejected_near_real": acceptor.rejected_forbidden,
            "rejected_near_accepted": acceptor.rejected_accepted,
            "rejected_degenerate": acceptor.rejected_degenerate, **extra}


def random_margin(n: int, d: int, *, min_distance: float = 0.3, max_draws: int = 10_000_000,
                  seed: int = 0, batch: int = 2048, margin_reading: str = "appendix_e",
                  max_pair_similarity: float = 0.3):
    """Uniform random unit vectors kept when at the margin from every kept one:
    1 - cos >= `min_distance` (appendix_e) or cos <= `max_pair_similarity` (rebuttal)."""
    check_parameters(n, d, min_distance=min_distance, max_draws=max_draws, seed=seed,
                     margin_reading=margin_reading, max_pair_similarity=max_pair_similarity)
    flag, _, _, threshold_of = MARGIN_READINGS[margin_reading]
    threshold = threshold_of({"min_distance": min_distance,
                              "max_pair_similarity": max_pair_similarity}[flag])
    rng = np.random.default_rng(seed)
    acceptor = GreedyAcceptor(n, d, threshold=threshold)
    while not acceptor.full and acceptor.seen < max_draws:
        size = min(batch, max_draws - acceptor.seen)
        acceptor.offer(unit_rows(rng.standard_normal((size, d), np.float32)))
    if not acceptor.full:
        raise _unreachable("random_margin", acceptor, max_draws,
                           f"loosen --{flag}, lower --num_identities, or raise --max_draws")
    return acceptor.accepted, _info(acceptor, margin_reading=margin_reading,
                                    **{flag: min_distance if flag == "min_distance"
                                       else max_pair_similarity},
                                    max_cos_allowed=threshold)


@dataclasses.dataclass(frozen=True)
class Identities:
    """Per-identity statistics of a labelled set of unit embeddings."""

    labels: np.ndarray  # (c,) the original label of each identity
    means: np.ndarray  # (c, d) unit mean direction
    spreads: np.ndarray  # (c,) mean cosine distance 1 - cos(x, mean) of its images
    counts: np.ndarray  # (c,) images per identity


def identity_statistics(x: np.ndarray, labels: np.ndarray) -> Identities:
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(values), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    means = unit_rows(sums)
    cos_to_mean = np.einsum("ij,ij->i", x, means[inverse])
    spreads = np.bincount(inverse, weights=1.0 - cos_to_mean) / counts
    return Identities(values, means, spreads.astype(np.float32), counts)


def interpolate_pair(mean_a, mean_b, spread_a, spread_b):
    """Variance-based interpolation between two identity means (rows broadcast).

    Rule: the new point lies on the great-circle arc from `mean_a` to `mean_b` at the
    fraction t = spread_a / (spread_a + spread_b) of the angle between them (t = 1/2 when
    both spreads are 0). The arc is cut in the ratio of the spreads, so the angles from the
    point to the two means are in the ratio of the spreads: farther from the wider identity,
    whose images reach farther, and closer to the tighter one (plain midpoints land inside the
    wider identity's cloud, the failure DiffFR's supplement shows).
    """
    mean_a = np.asarray(mean_a, np.float64)
    mean_b = np.asarray(mean_b, np.float64)
    total = spread_a + spread_b
    t = np.where(total > 0, spread_a / np.where(total > 0, total, 1.0), 0.5)[..., None]
    cos = np.clip(np.sum(mean_a * mean_b, axis=-1, keepdims=True), -1.0, 1.0)
    theta = np.arccos(cos)
    sin = np.sin(theta)
    safe = sin > 1e-6
    wa = np.where(safe, np.sin((1 - t) * theta) / np.where(safe, sin, 1.0), 1 - t)
    wb = np.where(safe, np.sin(t * theta) / np.where(safe, sin, 1.0), t)
    return unit_rows((wa * mean_a + wb * mean_b).astype(np.float32))


def diffr(n: int, gallery: np.ndarray, labels: np.ndarray, *, nms_threshold: float = 0.7,
          max_draws: int = 10_000_000, seed: int = 0, batch: int = 2048):
    """Fictional identities by variance-based interpolation of random pairs of real
    identities, filtered by ID-NMS (cosine to every real identity mean and every accepted
    identity at most `nms_threshold`)."""
    check_parameters(n, gallery.shape[1], nms_threshold=nms_threshold, max_draws=max_draws,
                     seed=seed)
    if len(labels) != len(gallery):
        raise InputError(f"--gallery_labels has {len(labels)} labels for {len(gallery)} "
                         "gallery rows")
    ids = identity_statistics(gallery, labels)
    c = len(ids.labels)
    if c < 2:
        raise InputError(f"diffr needs at least 2 real identities in --gallery_labels, got {c}")
    rng = np.random.default_rng(seed)
    acceptor = GreedyAcceptor(n, gallery.shape[1], threshold=nms_threshold, forbidden=ids.means)
    while not acceptor.full and acceptor.seen < max_draws:
        size = min(batch, max_draws - acceptor.seen)
        a = rng.integers(0, c, size)
        b = (a + rng.integers(1, c, size)) % c  # a different identity
        candidates = interpolate_pair(ids.means[a], ids.means[b], ids.spreads[a], ids.spreads[b])
        acceptor.offer(candidates)
    if not acceptor.full:
        raise _unreachable("diffr", acceptor, max_draws,
                           "raise --nms_threshold or --max_draws, lower --num_identities, or "
                           "give a gallery with more identities")
    return acceptor.accepted, _info(acceptor, nms_threshold=nms_threshold, real_identities=c,
                                    mean_real_spread=float(ids.spreads.mean()))


def perturbed_gallery(n: int, gallery: np.ndarray, *, perturbation: float = 1.0,
                      min_source_similarity: float = 0.3, max_source_similarity: float = 0.7,
                      max_similarity: float = 0.3, max_draws: int = 10_000_000, seed: int = 0,
                      batch: int = 2048):
    """Ours (inspired by Vec2Face, not its method): normalize(g + perturbation * eps),
    eps ~ N(0, I/d), for random gallery rows g; kept when min <= cos(new, g) <=
    max_source_similarity and the cosine to every accepted row is at most
    `max_similarity`."""
    check_parameters(n, gallery.shape[1], perturbation=perturbation,
                     min_source_similarity=min_source_similarity,
                     max_source_similarity=max_source_similarity, max_similarity=max_similarity,
                     max_draws=max_draws, seed=seed)
    m, d = gallery.shape
    rng = np.random.default_rng(seed)
    acceptor = GreedyAcceptor(n, d, threshold=max_similarity)
    off_band = 0
    while not acceptor.full and acceptor.seen < max_draws:
        size = min(batch, max_draws - acceptor.seen)
        source = gallery[rng.integers(0, m, size)]
        eps = rng.standard_normal((size, d), np.float32) / np.sqrt(d)
        candidates = unit_rows(source + perturbation * eps)
        to_source = np.einsum("ij,ij->i", candidates, source)
        keep = (to_source >= min_source_similarity) & (to_source <= max_source_similarity)
        before = acceptor.seen
        acceptor.offer(candidates, keep)
        off_band += int((~keep[:acceptor.seen - before]).sum())
    if not acceptor.full:
        raise _unreachable("perturbed_gallery", acceptor, max_draws,
                           "loosen --min/max_source_similarity or --max_similarity, adjust "
                           "--perturbation, or raise --max_draws")
    return acceptor.accepted, _info(acceptor, rejected_source_band=off_band,
                                    perturbation=perturbation, max_similarity=max_similarity,
                                    source_band=[min_source_similarity, max_source_similarity])


def stated_and_chosen(method: str, values: dict) -> tuple[list[dict], list[dict]]:
    """(what the paper states, what we chose) for `method`, as report.json lists them;
    a choice that is a flag takes its value from `values` (the run's flags)."""
    stated = list(PAPER[method])
    if method == "random_margin":
        reading = values.get("margin_reading", "appendix_e")
        flag, number, source, _ = MARGIN_READINGS[reading]
        stated.append((flag, number, source))
    paper = [{"name": name, "value": value, "source": source}
             for name, value, source in stated]
    choices = [{"name": name, "value": values.get(name) if value is None else value, "why": why}
               for name, value, why in CHOICES[method]]
    return paper, choices
