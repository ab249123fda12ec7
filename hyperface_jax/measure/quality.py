"""Dataset quality figures of a labelled set of face embeddings, blockwise and memory-mapped.

The figures of the Vec2Face appendix and HyperFace appendix D, for per-image features
`x` (N, d, unit rows) with identity labels (N,):

- intra-class noise: images whose cosine to the mean feature of the *other* images of
  their identity (leave-one-out: an image never votes for its own centre) is below
  `outlier_threshold` (0.3); identity consistency = each identity's mean of that cosine.
  With the image inside the mean, an outlier in a class of k images scores about 1/sqrt(k)
  against a mean it pulls towards itself (0.58 for k = 3) and is missed; left out, it
  scores its true cosine. An identity of one image has no other images: its image is not
  judged (cosine NaN, never an outlier) and its consistency is NaN;
- inter-class noise: pairs of identities whose mean features have a cosine above
  `same_identity_threshold` (0.7);
- genuine (same identity) and impostor (different identities) cosine distributions, as
  histograms of `BINS` bins on [-1, 1], with exact sums for their means and variances,
  the equal error rate (EER, the threshold where the false-accept and false-reject rates
  cross, interpolated between bin edges) and the decidability
  d' = |mu_g - mu_i| / sqrt((var_g + var_i) / 2);
- with a reference (real) set: identity leakage (share of synthetic identities whose mean
  has a cosine above `same_identity_threshold` to some reference identity mean) and, for
  every synthetic image, its most similar reference image (for the top-k cleaning).

Scale: `x` may be a read-only `np.memmap` of a 3.2M x 512 file. Nothing N x N is formed:
genuine pairs are enumerated identity by identity in chunks of whole identities (about
`chunk_rows` rows); impostor pairs are all pairs with different labels among a uniform
random subset of `impostor_sample` images (every image when N <= impostor_sample, then the
figures are exact): for a subset of s images that is ~s^2/2 pairs, an unbiased sample of
the impostor distribution whose pairs share images. Identity means are (C, d) in memory.
Cost: genuine O(N * chunk_rows * d), impostor O(s^2 d), inter-class O(C^2 d), leakage
O(N * R * d) for R reference images.
"""

import dataclasses

import numpy as np

from hyperface_jax.io.files import InputError

BINS = 20_000  # histogram bins on [-1, 1]: width 1e-4
UNIT_TOLERANCE = 1e-3


def bin_index(values: np.ndarray) -> np.ndarray:
    index = ((values + np.float32(1)) * np.float32(BINS / 2)).astype(np.int32)
    return np.clip(index, 0, BINS - 1, out=index)


def bin_edges() -> np.ndarray:
    return np.linspace(-1.0, 1.0, BINS + 1)


@dataclasses.dataclass
class Distribution:
    """A histogram of cosines plus exact moments."""

    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(BINS, np.int64))
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float32).ravel()
        if values.size:
            self.counts += np.bincount(bin_index(values), minlength=BINS)
            self.total += float(values.sum(dtype=np.float64))
            self.total_sq += float(np.dot(values, values))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    @property
    def var(self) -> float:
        if not self.n:
            return float("nan")
        return max(0.0, self.total_sq / self.n - self.mean ** 2)

    def quantile(self, q: float) -> float:
        cum = np.cumsum(self.counts)
        k = int(np.searchsorted(cum, q * cum[-1]))
        return float(bin_edges()[min(k, BINS - 1)] + 1.0 / BINS)


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) from genuine and impostor histogram counts on `bin_edges()`.

    At edge k: FRR = share of genuine below it, FAR = share of impostors at or above it.
    The EER is where FRR - FAR changes sign, linearly interpolated between edges.
    """
    g = np.concatenate([[0.0], np.cumsum(genuine)]) / max(1, genuine.sum())
    far = 1.0 - np.concatenate([[0.0], np.cumsum(impostor)]) / max(1, impostor.sum())
    diff = g - far  # increasing from -1 to 1 over the edges
    k = int(np.searchsorted(diff, 0.0))
    edges = bin_edges()
    if k == 0:
        return float(far[0]), float(edges[0])
    d0, d1 = diff[k - 1], diff[k]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    eer = (1 - w) * g[k - 1] + w * g[k]
    return float(eer), float((1 - w) * edges[k - 1] + w * edges[k])


def decidability(genuine: Distribution, impostor: Distribution) -> float:
    return abs(genuine.mean - impostor.mean) / np.sqrt((genuine.var + impostor.var) / 2)


def check_rows(block: np.ndarray, start: int, what: str) -> None:
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        row = start + int(np.argmin(finite))
        raise InputError(f"{what} contains NaN or Inf (first in row {row})")
    norms = np.linalg.norm(block, axis=1)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise InputError(f"{what} row {start + row} is not a unit vector (norm {norms[row]:.4g}); "
                         "normalise the features first")


def _rows(x, index: np.ndarray | slice, what: str) -> np.ndarray:
    block = np.asarray(x[index], np.float32)
    start = index.start if isinstance(index, slice) else 0
    if isinstance(index, slice):
        check_rows(block, start, what)
    else:
        try:
            check_rows(block, 0, what)
        except InputError:  # name the file row, not the block row
            bad = ~np.isfinite(block).all(axis=1) | (
                np.abs(np.linalg.norm(block, axis=1) - 1) > UNIT_TOLERANCE)
            check_rows(np.asarray(x[int(index[np.argmax(bad)])], np.float32)[None],
                       int(index[np.argmax(bad)]), what)
            raise
    return block


@dataclasses.dataclass
class IdentityFigures:
    labels: np.ndarray  # (C,) label values
    counts: np.ndarray  # (C,) images per identity
    means: np.ndarray  # (C, d) unit mean features
    consistency: np.ndarray  # (C,) mean leave-one-out cosine of its images (NaN: 1 image)
    outliers: np.ndarray  # (C,) images under the outlier threshold
    outlier_rows: np.ndarray  # file rows of the intra-class outliers
    genuine: Distribution
    unjudged: int = 0  # images with no other image in their identity


def leave_one_out_cosines(block: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """cos(x_i, S_i - x_i) for rows x_i of `block` and the sum S_i of all rows of x_i's
    identity (float64): the cosine to the mean of the identity's other images, NaN when
    those sum to (nearly) nothing, e.g. an identity of one image."""
    x = block.astype(np.float64)
    dot = np.einsum("ij,ij->i", x, sums)
    sq = np.einsum("ij,ij->i", x, x)
    rest_sq = np.einsum("ij,ij->i", sums, sums) - 2 * dot + sq  # |S - x|^2
    rest = np.sqrt(np.maximum(rest_sq, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (dot - sq) / (np.sqrt(sq) * rest)
    cos[rest <= 1e-6] = np.nan
    return cos


def identity_figures(x, labels: np.ndarray, *, outlier_threshold: float = 0.3,
                     chunk_rows: int = 2048, what: str = "embeddings", progress=None):
    """One pass over the images grouped by identity: means, leave-one-out cosines, genuine
    pairs. Every row is validated (finite, unit norm) as it is read."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    c, d = len(values), x.shape[1]
    means = np.zeros((c, d), np.float32)
    consistency = np.zeros(c, np.float64)
    judged = np.zeros(c, np.int64)
    outliers = np.zeros(c, np.int64)
    outlier_rows = []
    genuine = Distribution()

    def read(rows):
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # contiguous: a plain slice
            return _rows(x, slice(int(rows[0]), int(rows[-1]) + 1), what)
        return _rows(x, rows, what)

    def to_mean(ids, block, local_ids, sums):
        """Leave-one-out cosines of `block`'s rows (identities `local_ids`, whose sums are
        `sums[local_ids - ids[0]]`); returns the outlier mask."""
        cos = leave_one_out_cosines(block, sums[local_ids - ids[0]])
        ok = np.isfinite(cos)
        consistency[ids] += np.bincount(local_ids[ok] - ids[0], weights=cos[ok],
                                        minlength=len(ids))
        judged[ids] += np.bincount(local_ids[ok] - ids[0], minlength=len(ids))
        low = ok & (cos < outlier_threshold)
        np.add.at(outliers, local_ids[low], 1)
        return low

    k = 0
    while k < c:
        # The next chunk: whole identities up to chunk_rows rows (at least one identity).
        end = int(np.searchsorted(starts, starts[k] + chunk_rows, side="right")) - 1
        end = max(end, k + 1)
        if end == k + 1 and counts[k] > chunk_rows:
            total = _big_identity(read, order[starts[k]:starts[k + 1]], k, means, chunk_rows,
                                  genuine)
            block_rows = order[starts[k]:starts[k + 1]]
            for s in range(0, len(block_rows), chunk_rows):
                rows = np.sort(block_rows[s:s + chunk_rows])
                block = read(rows)
                ids = np.array([k])
                low = to_mean(ids, block, np.full(len(rows), k), total[None])
                outlier_rows.append(rows[low])
        else:
            rows = order[starts[k]:starts[end]]
            sort = np.argsort(rows)
            block = np.empty((len(rows), d), np.float32)
            block[sort] = read(rows[sort])
            local = inverse[rows]
            sums = np.add.reduceat(block.astype(np.float64), starts[k:end] - starts[k], axis=0)
            means[k:end] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            low = to_mean(np.arange(k, end), block, local, sums)
            outlier_rows.append(rows[low])
            _genuine_pairs(block, counts[k:end], genuine)
        if progress is not None:
            progress(int(starts[end] - starts[k]))
        k = end
    with np.errstate(invalid="ignore", divide="ignore"):
        consistency = np.where(judged > 0, consistency / np.maximum(judged, 1), np.nan)
    return IdentityFigures(
        labels=values, counts=counts, means=means, consistency=consistency,
        outliers=outliers,
        outlier_rows=np.sort(np.concatenate(outlier_rows)) if outlier_rows else np.zeros(0, int),
        genuine=genuine, unjudged=int(counts.sum() - judged.sum()))


def _genuine_pairs(block, sizes, genuine):
    """Same-identity pairs of a block of whole identities stored one after the other.

    Identities are padded to a common size inside buckets of sizes within a factor of 2
    and their Gram matrices taken as one batched product: O(sum_i s_i^2 d) work."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    bucket = np.ceil(np.log2(np.maximum(sizes, 1))).astype(int)
    for b in np.unique(bucket):
        which = np.flatnonzero((bucket == b) & (sizes > 1))
        if not len(which):
            continue
        kmax = int(sizes[which].max())
        padded = np.zeros((len(which), kmax, block.shape[1]), np.float32)
        for slot, i in enumerate(which):
            padded[slot, :sizes[i]] = block[offsets[i]:offsets[i + 1]]
        gram = np.matmul(padded, padded.transpose(0, 2, 1))
        a = np.arange(kmax)
        valid = (a[:, None] < a[None, :])[None] & (a[None, None, :] < sizes[which][:, None, None])
        genuine.add(gram[valid])


def _big_identity(read, rows, k, means, chunk_rows, genuine):
    """An identity larger than a chunk: its mean and its pairs, block by block."""
    rows = np.sort(rows)
    blocks = [rows[s:s + chunk_rows] for s in range(0, len(rows), chunk_rows)]
    total = np.zeros(means.shape[1], np.float64)
    for b in blocks:
        total += read(b).sum(axis=0, dtype=np.float64)
    means[k] = total / max(np.linalg.norm(total), 1e-12)
    for i, bi in enumerate(blocks):
        xi = read(bi)
        gram = xi @ xi.T
        genuine.add(gram[np.triu_indices(len(bi), k=1)])
        for bj in blocks[i + 1:]:
            genuine.add(xi @ read(bj).T)
    return total


def impostor_distribution(x, labels: np.ndarray, *, sample: int = 20_000, seed: int = 0,
                          block: int = 2048):
    """Cosines of all different-label pairs among a uniform random subset of `sample` rows
    (all rows when N <= sample: exact). Returns (Distribution, rows used, exact)."""
    n = x.shape[0]
    exact = n <= sample
    rows = np.arange(n) if exact else np.sort(
        np.random.default_rng(seed).choice(n, size=sample, replace=False))
    sub = np.asarray(x[:] if exact else x[rows], np.float32)  # rows validated by the caller
    lab = labels[rows]
    dist = Distribution()
    for i in range(0, len(rows), block):
        xi, li = sub[i:i + block], lab[i:i + block]
        for j in range(i, len(rows), block):
            gram = xi @ sub[j:j + block].T
            different = li[:, None] != lab[None, j:j + block]
            if i == j:
                different = np.triu(different, k=1)
            dist.add(gram[different])
    return dist, len(rows), exact


def close_pairs(means: np.ndarray, threshold: float, *, block: int = 4096, limit: int = 10_000):
    """Pairs (a < b) of rows with cosine above `threshold`, their count, and each row's
    largest cosine to another row. At most `limit` pairs are listed (the count is exact)."""
    c = len(means)
    nearest = np.full(c, -np.inf, np.float32)
    listed, count = [], 0
    for i in range(0, c, block):
        for j in range(i, c, block):
            s = means[i:i + block] @ means[j:j + block].T
            if i == j:
                np.fill_diagonal(s, -np.inf)
            np.maximum(nearest[i:i + block], s.max(axis=1), out=nearest[i:i + block])
            if i != j:
                np.maximum(nearest[j:j + block], s.max(axis=0), out=nearest[j:j + block])
            a, b = np.nonzero(np.triu(s, k=1 if i == j else -len(s)) > threshold)
            count += len(a)
            if len(listed) < limit:
                listed += [(int(i + p), int(j + q), float(s[p, q]))
                           for p, q in zip(a, b, strict=True)]
    return listed[:limit], count, nearest


def cosine_to_own(x, labels: np.ndarray, targets: np.ndarray, *, block: int = 4096,
                  what: str = "embeddings") -> np.ndarray:
    """For every row i of `x` (read blockwise), cos(x_i, targets[labels[i]])."""
    out = np.empty(x.shape[0], np.float32)
    for s in range(0, x.shape[0], block):
        xb = _rows(x, slice(s, min(x.shape[0], s + block)), what)
        out[s:s + len(xb)] = np.einsum("ij,ij->i", xb, targets[labels[s:s + len(xb)]])
    return out


def nearest_reference(x, reference: np.ndarray, *, block: int = 4096, what: str = "embeddings",
                      progress=None, top_pairs: int = 0):
    """For every row of `x` (memory-mapped, read blockwise), the largest cosine to a row of
    `reference` and that row's index; with `top_pairs` = k > 0 also, from the same pass,
    the k most similar (row, reference row) pairs over all pairs (`TopPairs`)."""
    n = x.shape[0]
    best = np.full(n, -np.inf, np.float32)
    arg = np.zeros(n, np.int64)
    pairs = TopPairs(top_pairs)
    for s in range(0, n, block):
        xb = _rows(x, slice(s, min(n, s + block)), what)
        for r in range(0, len(reference), block):
            sim = xb @ reference[r:r + block].T
            if top_pairs:
                pairs.offer(sim, s, r)
            j = sim.argmax(axis=1)
            v = sim[np.arange(len(xb)), j]
            better = v > best[s:s + len(xb)]
            best[s:s + len(xb)][better] = v[better]
            arg[s:s + len(xb)][better] = r + j[better]
        if progress is not None:
            progress(len(xb))
    return (best, arg, pairs) if top_pairs else (best, arg)


class TopPairs:
    """The k largest entries seen of blocks of a (rows x reference) similarity matrix:
    `rows`, `references`, `cos`, most similar first (equal cosines by row, then reference
    row, among the entries kept). A block only contributes its entries at or above the current k-th
    value, so after the first blocks each costs one comparison pass."""

    def __init__(self, k: int):
        self.k = k
        self.rows = np.zeros(0, np.int64)
        self.references = np.zeros(0, np.int64)
        self.cos = np.zeros(0, np.float32)

    def offer(self, sim: np.ndarray, row0: int, reference0: int) -> None:
        floor = self.cos[-1] if len(self.cos) >= self.k else -np.inf
        i, j = np.nonzero(sim >= floor)
        if len(i) > self.k:  # keep the block's k best before the merge
            part = np.argpartition(-sim[i, j], self.k - 1)[:self.k]
            i, j = i[part], j[part]
        rows = np.concatenate([self.rows, row0 + i])
        refs = np.concatenate([self.references, reference0 + j])
        cos = np.concatenate([self.cos, sim[i, j].astype(np.float32)])
        order = np.lexsort((refs, rows, -cos))[:self.k]
        self.rows, self.references, self.cos = rows[order], refs[order], cos[order]

    def distinct_rows(self) -> np.ndarray:
        """The rows of the pairs, each once, in the order of its most similar pair."""
        _, first = np.unique(self.rows, return_index=True)
        return self.rows[np.sort(first)]


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties by lower index)."""
    k = min(k, len(values))
    if k == 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.lexsort((part, -values[part]))]
