"""Compiled (Numba) CPU Clements decomposition of a stack of unitaries: one loop over the nullings per matrix.

The algorithm is :func:`uhnas.hardware.mzi.mesh.clements_decompose`'s (see it for the nulling order, the phase
formulas and how the left MZIs are moved through the diagonal); this is how
:func:`~uhnas.hardware.mzi.mesh.clements_decompose_many` computes it on a CPU.  For the small meshes of a layer
(n = 8, a few hundred meshes) a matrix needs a few hundred complex multiply-adds; run as vectorised numpy steps over
the stack that took hundreds of tiny numpy calls, nearly all call overhead.  Here each matrix is copied once into a
working matrix and nulled in place; what depends only on n (which entry each step nulls, from which side, and the
mesh position its MZI ends up in) comes precomputed.

At small n the time goes into the libm calls of the phase formulas, so each step evaluates them with as few as it
can, to the same numbers up to rounding: with (u, v) = (b, a) for a right nulling and (a, b) for a left one,
theta = 2 atan2(|u|, |v|) as in ``clements_decompose``; phi = angle(v) - angle(u) (+ pi for a right nulling) mod
2 pi is taken as the angle of (-) v u^* (one atan2 instead of two); the MZI's 2x2 transfer is built from
sin(theta/2) = |u| / h, cos(theta/2) = |v| / h (h = sqrt(|u|^2 + |v|^2)) and e^{i phi} = (-) v u^* / (|u| |v|)
instead of from sines and exponentials of the phases; moduli are square roots of |z|^2.  Where an entry is zero or
so small that these products would underflow, the step uses ``clements_decompose``'s formulas as written
(angle(-0 + 0j) = pi included).  No fastmath: the results are the numpy code's to float64 rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["decompose_stack"]

TWO_PI = 2.0 * math.pi
TINY = 1e-280  # below this, squares and products of moduli may lose precision to underflow: take the exact path


@njit(cache=True, nogil=True, error_model="numpy")
def _modulus(z: complex) -> float:  # pragma: no cover - compiled
    """|z|, as sqrt(re^2 + im^2) (hypot where that would underflow)."""
    q = z.real * z.real + z.imag * z.imag
    return math.sqrt(q) if q > TINY else abs(z)


@njit(cache=True, nogil=True, error_model="numpy")
def _null(  # pragma: no cover - compiled
    u: complex, v: complex, right: bool
) -> tuple[float, float, complex, complex, complex, complex]:
    """theta, phi and T00, T01, T10, T11 of the MZI of one nulling, (u, v) = (b, a) (right) or (a, b) (left).

    theta = 2 atan2(|u|, |v|), phi = angle(v) - angle(u) (+ pi if right) mod 2 pi; T = i e^{i theta/2}
    [[e^{i phi} s, c], [e^{i phi} c, -s]] (s, c of theta/2).
    """
    ru, rv = _modulus(u), _modulus(v)
    sign = -1.0 if right else 1.0
    if ru * rv > TINY:
        e = sign * (v / rv) * (u / ru).conjugate()  # e^{i phi}
        z = math.atan2(e.imag, e.real)
        phi = z + TWO_PI if z < 0 else z  # as (z % 2 pi), rounding included
    else:  # a zero (or underflowing) entry: the phases as clements_decompose takes them
        pu, pv = np.angle(u), np.angle(v)
        phi = (pv - pu + (math.pi if right else 0.0)) % TWO_PI
        unit_u = u / ru if ru > 0 else complex(math.cos(pu), math.sin(pu))
        unit_v = v / rv if rv > 0 else complex(math.cos(pv), math.sin(pv))
        e = sign * unit_v * unit_u.conjugate()
    q = ru * ru + rv * rv
    h = math.sqrt(q) if q > TINY else math.hypot(ru, rv)
    s, c = (ru / h, rv / h) if h > 0 else (0.0, 1.0)  # sin, cos of theta/2 (theta = 2 atan2(0, 0) = 0)
    g = complex(-s, c)  # i e^{i theta/2}
    ge = g * e
    return 2.0 * math.atan2(ru, rv), phi, ge * s, g * c, ge * c, -g * s


@njit(cache=True, nogil=True, error_model="numpy")
def decompose_stack(  # pragma: no cover - compiled; checked against clements_decompose in tests/test_mzi_kernels.py
    mats: np.ndarray,  # (M, n, n) complex128 unitaries
    from_right: np.ndarray,  # (S,) bool: step s nulls from the right (columns m, m+1) or from the left (rows m, m+1)
    mode: np.ndarray,  # (S,) upper mode m of the MZI of every step, in nulling order
    pivot: np.ndarray,  # (S,) row (right) or column (left) of the entries a, b every step reads
    slot: np.ndarray,  # (S,) mesh position (index into theta/phi) every step's MZI ends up in
    theta: np.ndarray,  # (M, K) float64 result: internal phases
    phi: np.ndarray,  # (M, K) external phases
    output: np.ndarray,  # (M, n) output phases
) -> None:
    meshes, n = mats.shape[0], mats.shape[1]
    steps = mode.shape[0]
    w = np.empty((n, n), dtype=np.complex128)
    th = np.empty(steps)  # theta, phi of every step
    ph = np.empty(steps)
    diag = np.empty(n)
    for p in range(meshes):
        w[:, :] = mats[p]
        for s in range(steps):
            m, right = mode[s], from_right[s]
            if right:  # [a, b] . T^dagger has a zero first entry: columns (m, m+1) times T^dagger,
                #        T^dagger = [[t00*, t10*], [t01*, t11*]]: x' = x t00* + y t01*, y' = x t10* + y t11*
                a, b = w[pivot[s], m], w[pivot[s], m + 1]
                th[s], ph[s], t00, t01, t10, t11 = _null(b, a, True)
                t00, t01, t10, t11 = t00.conjugate(), t01.conjugate(), t10.conjugate(), t11.conjugate()
                for i in range(n):
                    x, y = w[i, m], w[i, m + 1]
                    w[i, m] = x * t00 + y * t01
                    w[i, m + 1] = x * t10 + y * t11
            else:  # T . [a, b]^T has a zero second entry: rows (m, m+1) times T from the left
                a, b = w[m, pivot[s]], w[m + 1, pivot[s]]
                th[s], ph[s], t00, t01, t10, t11 = _null(a, b, False)
                for j in range(n):
                    x, y = w[m, j], w[m + 1, j]
                    w[m, j] = t00 * x + t01 * y
                    w[m + 1, j] = t10 * x + t11 * y
        for i in range(n):
            diag[i] = np.angle(w[i, i])
        # move each T_l^dagger through D, last left nulling first:
        # T(theta, phi)^+ diag(e^{ia}, e^{ib}) = diag(-e^{-i(theta+phi)} e^{ib}, -e^{-i theta} e^{ib}) T(theta, a - b)
        for s in range(steps - 1, -1, -1):
            if not from_right[s]:
                m = mode[s]
                a_m, b_m = diag[m], diag[m + 1]
                diag[m] = b_m - th[s] - ph[s] + math.pi
                diag[m + 1] = b_m - th[s] + math.pi
                ph[s] = (a_m - b_m) % TWO_PI
        for s in range(steps):
            theta[p, slot[s]] = th[s]
            phi[p, slot[s]] = ph[s]
        for i in range(n):
            output[p, i] = diag[i] % TWO_PI
