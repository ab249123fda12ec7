"""How good can a packing be? Lower bounds on the worst-pair cosine of n points in d-D.

No configuration of `n` unit vectors in `d` dimensions has a worst pair below
`bound_max_cos(n, d)`:

- n <= d + 1: -1/(n - 1), attained by the regular simplex;
- d + 1 < n <= 2d: 0 (Rankin), attained by the cross-polytope when n = 2d;
- n > 2d: Levenshtein's bound. If A(d, s) is the largest size of a spherical code with
  all inner products <= s, then A(d, s) <= L(d, s) with
      L_{2k-1}(d, s) = C(k+d-3, k-1) [ (2k+d-3)/(d-1) - (P_{k-1}(s) - P_k(s)) / ((1-s) P_k(s)) ]
          for s in [t_{k-1}^{1,1}, t_k^{1,0}],
      L_{2k}(d, s)   = C(k+d-2, k) [ (2k+d-1)/(d-1)
                        - (1+s) (P_k(s) - P_{k+1}(s)) / ((1-s) (P_k(s) + P_{k+1}(s))) ]
          for s in [t_k^{1,0}, t_k^{1,1}],
  where P_i is the Gegenbauer polynomial of the sphere S^{d-1} (Jacobi
  P_i^{(a,a)}, a = (d-3)/2, normalised to P_i(1) = 1), t_k^{1,0} and t_k^{1,1} are the
  largest zeros of the adjacent Jacobi polynomials P_k^{(a+1,a)} and P_k^{(a+1,a+1)}, and
  t_0^{1,1} = -1. L is continuous and increasing in s, so the smallest s with L(d, s) >= n
  bounds the worst pair from below; we find it by bisection.
  Sources: V. I. Levenshtein, "On bounds for packings in n-dimensional Euclidean space",
  Soviet Math. Dokl. 20 (1979) 417-421; "Universal bounds for codes and designs",
  Handbook of Coding Theory (1998), ch. 6. The bound is attained by the icosahedron
  (12 in 3-D: 1/sqrt 5), E8's 240 roots (1/2) and the other tight designs; the tests
  check those values.
- d = 2: the regular n-gon is optimal, cos(2 pi / n).
"""

import math
from functools import cache

import numpy as np
from scipy.special import eval_jacobi, roots_jacobi


def _gegenbauer(i: int, a: float, s: float) -> float:
    return float(eval_jacobi(i, a, a, s) / eval_jacobi(i, a, a, 1.0))


@cache
def _largest_zero(k: int, a: float, b: float) -> float:
    if k == 0:
        return -1.0
    return float(np.max(roots_jacobi(k, a, b)[0]))


def levenshtein_bound(d: int, s: float) -> float:
    """L(d, s): no spherical code in `d` dimensions with all inner products <= s has more
    than this many points (d >= 3, -1 <= s < 1)."""
    if d < 3:
        raise ValueError(f"levenshtein_bound needs d >= 3, got {d}")
    a = (d - 3) / 2
    k = 1
    while True:
        lo, mid, hi = _largest_zero(k - 1, a + 1, a + 1), _largest_zero(k, a + 1, a), \
            _largest_zero(k, a + 1, a + 1)
        if lo <= s <= mid:
            pk1, pk = _gegenbauer(k - 1, a, s), _gegenbauer(k, a, s)
            return math.comb(k + d - 3, k - 1) * (
                (2 * k + d - 3) / (d - 1) - (pk1 - pk) / ((1 - s) * pk))
        if mid <= s <= hi:
            pk, pk2 = _gegenbauer(k, a, s), _gegenbauer(k + 1, a, s)
            return math.comb(k + d - 2, k) * (
                (2 * k + d - 1) / (d - 1) - (1 + s) * (pk - pk2) / ((1 - s) * (pk + pk2)))
        k += 1


def bound_max_cos(n: int, d: int, *, tol: float = 1e-12) -> float:
    """The best known lower bound on the worst-pair cosine of `n` unit vectors in `d`-D."""
    if n < 2 or d < 1:
        raise ValueError(f"need n >= 2 points in d >= 1 dimensions, got n={n}, d={d}")
    if d == 1:
        return 1.0 if n > 2 else -1.0
    if n <= d + 1:
        return -1.0 / (n - 1)
    if d == 2:
        return math.cos(2 * math.pi / n)
    if n <= 2 * d:
        return 0.0
    lo, hi = 0.0, 1.0 - 1e-15  # L(d, 0) = 2d < n
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if levenshtein_bound(d, mid) >= n:
            hi = mid
        else:
            lo = mid
    return hi
