"""Algebraic spherical codes: what a mathematician would pack first, to hold packings against.

- `hadamard_code(d)`: +- the standard basis and +- the rows of the normalised
  Sylvester-Hadamard matrix of order d (a power of 2): 4d points, worst pair 1/sqrt(d)
  (2,048 points in 512-D at 0.0442).
- `kerdock_bases(m)`: the 2^(m-1) + 1 mutually unbiased orthonormal bases of R^(2^m),
  m even, from a Kerdock set of quadratic forms (Calderbank, Cameron, Kantor and Seidel,
  "Z4-Kerdock codes, orthogonal spreads, and extremal Euclidean line-sets", Proc. London
  Math. Soc. 75 (1997)). Every inner product between two bases is +-2^(-m/2).
- `kerdock_code(d)`: those bases of R^(d/2) placed on the two orthogonal halves of R^d,
  with antipodes: 2 * 2 * (d/2) * (d/4 + 1) points (132,096 in 512-D), worst pair
  sqrt(2/d) (1/16 in 512-D).
- `gold_code(d)`: the binary Gold code of length 2^m - 1 (m odd, the largest with
  2^m - 1 <= d) as +-1/sqrt(2^m - 1) vectors zero-padded to R^d: 4^m points, worst pair
  (2^((m+1)/2) - 1) / (2^m - 1) (262,144 points in 512-D at 31/511 = 0.0607, below the
  Kerdock code's 1/16 with twice its points). Its first 2^m points are a regular simplex
  (every inner product -1/(2^m - 1)).
- `algebraic_code(n, d)`: the first n points of the best of these for n points.

The Kerdock set, built exactly (no search): for n = m - 1 (odd), F = GF(2^n) and a point
(x, e) of F x GF(2), the quadratic forms
    Q_u(x, e) = sum_{i=1}^{(n-1)/2} Tr((u x)^(2^i + 1)) + e Tr(u x),   u in F,
have pairwise differences Q_u + Q_v that are bent (their symplectic forms are
non-singular): this is the classical description of the binary Kerdock code as 2^(m-1)
cosets of the first-order Reed-Muller code RM(1, m) in RM(2, m) (MacWilliams and Sloane,
"The Theory of Error-Correcting Codes", ch. 15). The basis of u is the rows of
H diag((-1)^Q_u) / 2^(m/2), H the Sylvester-Hadamard matrix with rows and columns
indexed by the m bits of (x, e); the standard basis is the extra one. Two vectors of the
bases u != v have inner product 2^-m sum_z (-1)^((Q_u + Q_v)(z) + w.z) = +-2^(-m/2)
because a bent function's Walsh transform is flat. `tests/test_codes.py` checks every
inner product at m = 2, 4, 6 and the flat spectra of all 8,128 pairs at m = 8.
"""

import math

import numpy as np

# Irreducible polynomials of GF(2^n) for the odd n used (bit i = coefficient of t^i).
_IRREDUCIBLE = {1: 0b11, 3: 0b1011, 5: 0b100101, 7: 0b10000011, 9: 0b1000010001,
                11: 0b100000000101}


def _check_power_of_two(d: int, what: str) -> int:
    if d < 1 or d & (d - 1):
        raise ValueError(f"{what} needs a power-of-two dimension, got {d}")
    return d.bit_length() - 1


def sylvester_hadamard(d: int) -> np.ndarray:
    """The +-1 Sylvester-Hadamard matrix of order d: H[a, b] = (-1)^popcount(a & b)."""
    _check_power_of_two(d, "sylvester_hadamard")
    a = np.arange(d)
    bits = np.bitwise_and(a[:, None], a[None, :])
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).astype(np.int8)


def hadamard_code(d: int = 512) -> np.ndarray:
    """(4d, d) float32: +-e_i then +-H_i/sqrt(d). Worst pair 1/sqrt(d) (for d >= 2)."""
    h = sylvester_hadamard(d).astype(np.float64) / math.sqrt(d)
    eye = np.eye(d)
    return np.concatenate([eye, -eye, h, -h]).astype(np.float32)


def _gf_mul(a: int, b: int, n: int) -> int:
    """Product in GF(2^n) = GF(2)[t] / (irreducible of degree n)."""
    poly, out = _IRREDUCIBLE[n], 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a >> n:
            a ^= poly
    return out


def _gf_mul_arrays(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """_gf_mul elementwise over broadcast integer arrays (n shift-and-add rounds)."""
    poly = _IRREDUCIBLE[n]
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    a, b, out = a.copy(), b.copy(), np.zeros(a.shape, np.int64)
    for _ in range(n):
        out ^= np.where(b & 1, a, 0)
        b >>= 1
        a <<= 1
        a ^= np.where(a >> n, poly, 0)
    return out


def _gf_pow(a: int, e: int, n: int) -> int:
    out = 1
    while e:
        if e & 1:
            out = _gf_mul(out, a, n)
        a = _gf_mul(a, a, n)
        e >>= 1
    return out


def _gf_trace(a: int, n: int) -> int:
    """Tr(a) = a + a^2 + ... + a^(2^(n-1)), an element of GF(2) (0 or 1)."""
    t, s = 0, a
    for _ in range(n):
        t ^= s
        s = _gf_mul(s, s, n)
    return t


def kerdock_forms(m: int) -> np.ndarray:
    """(2^(m-1), 2^m) uint8: the Kerdock set's quadratic forms Q_u as truth tables over
    the points z = x + 2^(m-1) e (x in GF(2^(m-1)) by its polynomial-basis bits)."""
    if m < 2 or m % 2:
        raise ValueError(f"Kerdock sets exist for even m >= 2, got m={m}")
    n = m - 1
    if n not in _IRREDUCIBLE:
        raise ValueError(f"kerdock_forms supports m in {sorted(k + 1 for k in _IRREDUCIBLE)}")
    size = 1 << n
    trace = np.array([_gf_trace(a, n) for a in range(size)], dtype=np.uint8)
    elements = np.arange(size)
    product = _gf_mul_arrays(elements[:, None], elements[None, :], n)
    q = np.zeros((size, size), dtype=np.uint8)               # q[u, x] = Q_u(x, 0)
    for i in range(1, (n - 1) // 2 + 1):
        power = np.array([_gf_pow(a, (1 << i) + 1, n) for a in range(size)])
        q ^= trace[power[product]]
    return np.concatenate([q, q ^ trace[product]], axis=1)   # e = 0, then e = 1


def kerdock_bases(m: int) -> np.ndarray:
    """(2^(m-1) + 1, 2^m, 2^m) float32: mutually unbiased orthonormal bases of R^(2^m);
    basis 0 is the standard basis. Cross-basis inner products are +-2^(-m/2)."""
    forms = kerdock_forms(m)
    d = 1 << m
    h = sylvester_hadamard(d).astype(np.float64) / math.sqrt(d)
    signs = 1.0 - 2.0 * forms.astype(np.float64)          # (2^(m-1), d)
    bases = h[None, :, :] * signs[:, None, :]             # H diag((-1)^Q_u)
    return np.concatenate([np.eye(d)[None], bases]).astype(np.float32)


def kerdock_code(d: int = 512) -> np.ndarray:
    """(d (d/4 + 1) * 2, d) float32: Kerdock bases of R^(d/2) on both halves of R^d, with
    antipodes; worst pair sqrt(2/d). d = 2^(m+1) with m even (8, 32, 128, 512, 2048).

    Order (so that prefixes stay good): basis by basis, and within a basis the two
    halves, each with its antipodes; the first 2d points are the cross-polytope."""
    k = _check_power_of_two(d, "kerdock_code")
    m = k - 1
    bases = kerdock_bases(m)                              # (B, d/2, d/2)
    half = d // 2
    blocks = []
    for basis in bases:
        for side in (0, 1):
            block = np.zeros((half, d), np.float32)
            block[:, side * half:(side + 1) * half] = basis
            blocks += [block, -block]
    return np.concatenate(blocks)


def kerdock_code_size(d: int) -> int:
    return 2 * 2 * (d // 2) * (d // 4 + 1)


def gold_degree(d: int) -> int:
    """The largest odd m with 2^m - 1 <= d that gold_code supports (0 if none)."""
    return max((m for m in _IRREDUCIBLE if m >= 3 and (1 << m) - 1 <= d), default=0)


def gold_words(m: int, count: int | None = None) -> np.ndarray:
    """(count, 2^m - 1) uint8: the first `count` (default all 4^m) words of the Gold code,
    c_{a,b}(x) = Tr(a x + b x^3) for x over the non-zero elements of GF(2^m), in the order
    b = 0, 1, ... and within each b, a = 0, 1, ... (b = 0 is the simplex code)."""
    if m not in _IRREDUCIBLE or m < 3 or m % 2 == 0:
        supported = sorted(k for k in _IRREDUCIBLE if k >= 3)
        raise ValueError(f"Gold codes here have odd m in {supported}, got m={m}")
    size = 1 << m
    count = size * size if count is None else count
    trace = np.array([_gf_trace(a, m) for a in range(size)], dtype=np.uint8)
    xs = np.arange(1, size)
    cubes = _gf_mul_arrays(_gf_mul_arrays(xs, xs, m), xs, m)
    linear = trace[_gf_mul_arrays(np.arange(size)[:, None], xs[None, :], m)]  # Tr(a x)
    blocks = []
    for b in range(math.ceil(count / size)):
        cubic = trace[_gf_mul_arrays(b, cubes, m)]                       # Tr(b x^3)
        blocks.append(linear ^ cubic[None, :])
    return np.concatenate(blocks)[:count]


def gold_worst_pair(m: int) -> float:
    """The Gold code's largest inner product between two distinct words as unit vectors:
    correlations take the values -1 and -1 +- 2^((m+1)/2) (Gold 1967, m odd)."""
    return ((1 << ((m + 1) // 2)) - 1) / ((1 << m) - 1)


def gold_code(d: int = 512, count: int | None = None) -> np.ndarray:
    """(count, d) float32: the first `count` (default 4^m) Gold words as +-1/sqrt(2^m - 1)
    vectors, zero-padded from 2^m - 1 to d coordinates. A linear code: the inner product of
    two words is that of their sum (another word) with the zero word, so the weights of the
    4^m words give every pairwise inner product (tests/test_codes.py checks them all)."""
    m = gold_degree(d)
    if not m:
        raise ValueError(f"gold_code needs d >= 7, got {d}")
    words = gold_words(m, count)
    x = np.zeros((len(words), d), np.float32)
    x[:, :words.shape[1]] = (1.0 - 2.0 * words) / math.sqrt(words.shape[1])
    return x


def algebraic_code(n: int, d: int = 512) -> tuple[np.ndarray, str, float]:
    """The first n points of the best code here for n points in d-D: (points, name,
    proven worst-pair cosine). Among the cross-polytope (2d points, worst pair 0), the
    Hadamard code (4d, 1/sqrt d; d a power of 2), the Kerdock code (sqrt(2/d); d = 2^(m+1),
    m even) and the Gold code (4^m, simplex prefix of 2^m), the lowest proven worst pair
    among those with n points."""
    if n < 2:
        raise ValueError(f"need n >= 2 points, got {n}")
    power_of_two = d >= 1 and not d & (d - 1)
    candidates = [(0.0, 2 * d, "cross-polytope")]
    if power_of_two:
        candidates.append((1.0 / math.sqrt(d), 4 * d, "hadamard"))
        if (d.bit_length() - 2) % 2 == 0 and d >= 8:
            candidates.append((math.sqrt(2.0 / d), kerdock_code_size(d), "kerdock"))
    m = gold_degree(d)
    if m:
        simplex = -1.0 / ((1 << m) - 1)
        candidates.append((simplex if n <= 1 << m else gold_worst_pair(m), 4 ** m, "gold"))
    fitting = [c for c in candidates if c[1] >= n]
    if not fitting:
        raise ValueError(f"no algebraic code here has {n} points in {d}-D (the largest has "
                         f"{max(c[1] for c in candidates)})")
    worst, _, name = min(fitting)
    if name == "cross-polytope":
        eye = np.eye(d, dtype=np.float32)
        x = np.concatenate([eye, -eye])[:n]
    elif name == "hadamard":
        x = hadamard_code(d)[:n]
    elif name == "kerdock":
        x = kerdock_code(d)[:n]
    else:
        x = gold_code(d, n)
    return x, name, worst
