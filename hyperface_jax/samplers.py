"""Identity samplers: the seeds' baselines for placing synthetic identities on the sphere.

Each sampler returns `(embeddings, info)`: an (n, d) float32 array of unit rows and a dict
of plain figures about the draw (draws taken, acceptance rate, ...). All are numpy, driven
by one `numpy.random.Generator`, so the same seed gives the same rows.

- `random_margin` (HyperFace appendix): random unit vectors, each kept only when its
  cosine *distance* (1 - cos) to every kept one is at least `min_distance`.
- `diffr` (DiffFR, "Complete the Feature Space"): fictional identities between two real
  identities of a labelled gallery by variance-based interpolation (rule in
  `interpolate_pair`), filtered by ID-NMS against the real identities and the accepted ones.
- `vec2face` (Vec2Face's loosely constrained vectors): gallery embeddings perturbed with
  Gaussian noise, kept when the cosine to their source lies in a band (a new identity, but
  near a face) and the cosine to every accepted one is at most `max_similarity`.

`hyperface` (the packing engine) is in `sample.py`, which calls `pack.run`.

Every acceptance rule here is the same greedy scan (`GreedyAcceptor`): candidates are
taken in order, one is accepted when its cosine to every row of a fixed "forbidden" set
(e.g. the real identities) is at most `forbidden_threshold` and to every accepted row at
most `threshold`. Candidates come in batches; a batch is first checked against the
accepted and forbidden rows with matrix products (blockwise, `BLOCK` rows at a time),
then scanned in order against the batch's earlier acceptances, so the result equals the
one-by-one scan exactly.
"""

import dataclasses

import numpy as np

from hyperface_jax.files import InputError

METHODS = ("random_margin", "diffr", "vec2face", "hyperface")
BLOCK = 4096  # rows per block of the similarity products (memory ~ BLOCK x BLOCK floats)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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

    @property
    def full(self) -> bool:
        return self.count >= self.n

    def offer(self, candidates: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Scan `candidates` in order (those with `keep` False are skipped and count as
        seen); returns the indices accepted. Stops once `n` rows are accepted; the
        candidates after that one are not counted as seen."""
        candidates = np.asarray(candidates, np.float32)
        ok = np.ones(len(candidates), bool) if keep is None else np.asarray(keep, bool).copy()
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
        self.rejected_accepted += offered - int(near_real[considered].sum()) - len(taken)
        self.accepted[self.count:self.count + len(taken)] = candidates[taken]
        self.count += len(taken)
        self.seen += last + 1
        return taken


def _check_common(n: int, max_draws: int) -> None:
    if n < 2:
        raise InputError(f"need at least 2 identities, got {n}")
    if max_draws < n:
        raise InputError(f"--max_draws={max_draws} is below --num_identities={n}")


def _unreachable(method: str, acceptor: GreedyAcceptor, max_draws: int, hint: str) -> InputError:
    return InputError(
        f"{method}: only {acceptor.count} of {acceptor.n} identities accepted within "
        f"--max_draws={max_draws} candidates; {hint}")


def _info(acceptor: GreedyAcceptor, **extra) -> dict:
    return {"draws": acceptor.seen, "accepted": acceptor.count,
            "acceptance_rate": acceptor.count / max(1, acceptor.seen),
            "rejected_near_real": acceptor.rejected_forbidden,
            "rejected_near_accepted": acceptor.rejected_accepted, **extra}


def random_margin(n: int, d: int, *, min_distance: float = 0.3, max_draws: int = 10_000_000,
                  seed: int = 0, batch: int = 2048):
    """Uniform random unit vectors kept when 1 - cos >= `min_distance` to every kept one."""
    _check_common(n, max_draws)
    if not 0 <= min_distance <= 2:
        raise InputError(f"--min_distance must be in [0, 2], got {min_distance}")
    rng = np.random.default_rng(seed)
    acceptor = GreedyAcceptor(n, d, threshold=1.0 - min_distance)
    while not acceptor.full and acceptor.seen < max_draws:
        size = min(batch, max_draws - acceptor.seen)
        acceptor.offer(unit_rows(rng.standard_normal((size, d), np.float32)))
    if not acceptor.full:
        raise _unreachable("random_margin", acceptor, max_draws,
                           "lower --min_distance or --num_identities, or raise --max_draws")
    return acceptor.accepted, _info(acceptor, min_distance=min_distance)


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


def diffr(n: int, gallery: np.ndarray, labels: np.ndarray, *, nms_threshold: float = 0.8,
          max_draws: int = 10_000_000, seed: int = 0, batch: int = 2048):
    """Fictional identities by variance-based interpolation of random pairs of real
    identities, filtered by ID-NMS (cosine to every real identity mean and every accepted
    identity at most `nms_threshold`)."""
    _check_common(n, max_draws)
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


def vec2face(n: int, gallery: np.ndarray, *, perturbation: float = 1.0,
             min_source_similarity: float = 0.3, max_source_similarity: float = 0.7,
             max_similarity: float = 0.3, max_draws: int = 10_000_000, seed: int = 0,
             batch: int = 2048):
    """Loosely constrained vectors: normalize(g + perturbation * eps), eps ~ N(0, I/d), for
    random gallery rows g; kept when min <= cos(new, g) <= max_source_similarity and the
    cosine to every accepted row is at most `max_similarity`."""
    _check_common(n, max_draws)
    if perturbation <= 0:
        raise InputError(f"--perturbation must be positive, got {perturbation}")
    if not -1 <= min_source_similarity <= max_source_similarity <= 1:
        raise InputError("need -1 <= --min_source_similarity <= --max_source_similarity <= 1, "
                         f"got {min_source_similarity} and {max_source_similarity}")
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
        raise _unreachable("vec2face", acceptor, max_draws,
                           "loosen --min/max_source_similarity or --max_similarity, adjust "
                           "--perturbation, or raise --max_draws")
    return acceptor.accepted, _info(acceptor, rejected_source_band=off_band,
                                    perturbation=perturbation, max_similarity=max_similarity,
                                    source_band=[min_source_similarity, max_source_similarity])
