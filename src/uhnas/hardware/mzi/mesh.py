"""Clements rectangular MZI mesh: exact decomposition and a fast, batched, noisy simulator.

A unitary ``U`` (n x n) is realised by a rectangular mesh of n(n-1)/2 Mach-Zehnder interferometers (MZIs) in
``n`` columns followed by one column of ``n`` output phase shifters (Clements et al., "Optimal design for universal
multiport interferometers", Optica 3, 1460 (2016)).  :func:`clements_decompose` computes the phases exactly;
:func:`mesh_matrix` rebuilds the matrix the mesh realises, optionally for a batch of Monte-Carlo draws of the
non-idealities collected in /work/shared/reference/hardware.md ("Coherent MZI mesh photonics"):

* phase error per shifter (Gaussian, resampled per draw) - ADEPT (DAC 2022), SimPhony;
* finite phase-control precision (b-bit quantisation of every programmed phase) - L2ight (NeurIPS 2021), ROQ;
* nearest-neighbour thermal crosstalk - L2ight, SimPhony's fitted gamma(d);
* insertion loss per MZI and its device-to-device spread - Lightening-Transformer, SimPhony device library;
* directional-coupler splitting-ratio error - Fang et al., Opt. Express 27, 14009 (2019); ADEPT.

Conventions
-----------
Modes are numbered 0..n-1 from the top.  Column ``c`` (0-based, light enters column 0 first) holds one MZI on every
mode pair ``(m, m+1)`` with ``m = c`` (mod 2) and ``m + 1 <= n - 1``.  MZIs are numbered column by column, top to
bottom; :class:`MeshPhases` carries ``column`` and ``top`` for each.  Each MZI is built, in the order light meets
the parts, from an external phase shifter ``phi`` on its top input arm, a directional coupler, an internal phase
shifter ``theta`` on its top arm, and a second directional coupler::

    T(theta, phi) = B(k2) . diag(e^{i theta}, 1) . B(k1) . diag(e^{i phi}, 1),
    B(k) = [[sqrt(1-k), i sqrt(k)], [i sqrt(k), sqrt(1-k)]]        (k: power cross-coupling ratio, ideally 1/2)

With ideal 50:50 couplers ``T = i e^{i theta/2} [[e^{i phi} sin(theta/2), cos(theta/2)],
[e^{i phi} cos(theta/2), -sin(theta/2)]]``: ``theta = 0`` is the cross state, ``theta = pi`` the bar state;
``theta`` lies in [0, pi], ``phi`` and the output phases in [0, 2 pi).  The mesh realises
``M = diag(e^{i output_phase}) . C_{n-1} ... C_1 . C_0`` where ``C_c`` applies column ``c``.

Loss is modelled as a loss-balanced layout: an MZI attenuates both arms by its insertion loss, and in a column where
an edge mode has no MZI that mode runs through a loss-matched dummy section with the same nominal loss (and its own
spread).  Every path then crosses ``depth`` loss elements, so uniform loss is the global factor
``10^(-depth * IL_dB / 20)``; ``depth = n`` for n >= 3 (a 2-mode mesh is a single MZI, depth 1; n = 1 has none).

Speed
-----
On a CPU the matrices come from compiled loops (:mod:`uhnas.hardware.mzi.mesh_kernel`, Numba): each MZI's 2x2
update applied only over the columns light has reached, its transfer made from cos/sin of the programmed phases
times a table of e^{i sigma z} (no sine per draw); small meshes (the backend's 8 x 8) 16 realisations at a time,
one per vector lane, large ones one realisation at a time in two cache-resident real planes.  Elsewhere (CUDA)
the same model runs as torch ops: rebuilding a mesh column by column costs 2 n^3 complex multiply-adds per draw
spread over ~n elementwise passes over the whole
(draws, n, n) matrix, which is memory-bound.  The torch builder instead uses light-cone tiles
(see the comments above :func:`_make_plan` and :func:`_build_tiles`): over s/2 consecutive columns the MZIs split
into upward triangles on row blocks of width s and downward triangles centred on the block boundaries; a downward
triangle followed by the next slab's upward one is a "diamond", and a width-2s diamond is a product of four width-s
ones.  Width-4 and width-8 tiles are built elementwise with the draws as the innermost axis (the gate table is laid
out so that no gather is needed), transposed once, and the width-8 layers are applied to the accumulated matrix
as real-block batched matrix products (in all the same 2 n^3 complex multiply-adds per draw as column by column,
but in BLAS, on cache-sized chunks of draws).  No Python loop over
draws or MZIs.  The mesh is treated as a ring (mode n-1 next to mode 0, joined only at always-diagonal idle
positions), padded with virtual modes/columns carrying identities where n does not fit; meshes with n < 12 use the
column-by-column product, laid out with the batch innermost (:func:`_build_columns`).

Many meshes of one size (the 2 meshes of every K x K block of a layer) are built by :func:`mesh_matrices` in one
batch of meshes x draws: one gate table, one builder pass, a fixed per-call overhead paid once instead of per mesh;
a :class:`MeshStack` caches the programmed phases across calls, and :func:`clements_decompose_many` decomposes many
unitaries in one call to a compiled loop (:mod:`uhnas.hardware.mzi.decompose_kernel`).  Measured by
``python bench/mesh.py``.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uhnas.hardware.counter_rng import counter_normals, fill_normals, seed_of
from uhnas.hardware.sampling import quantile_table

__all__ = [
    "ChipErrors",
    "MeshLayout",
    "MeshNoise",
    "MeshPhases",
    "MeshStack",
    "clements_decompose",
    "clements_decompose_many",
    "mesh_layout",
    "mesh_matrices",
    "mesh_matrix",
    "sample_chip",
]

TWO_PI = 2.0 * math.pi
NOMINAL_SPLIT = 0.5  # power cross-coupling ratio of an ideal 50:50 directional coupler
_DB_TO_AMP = -math.log(10.0) / 20.0  # field amplitude = 10^(-dB/20) = exp(-dB ln10 / 20)
CPU_DRAW_CHUNK = 16  # least draws per batched product chunk on a CPU (measured best at n = 64 and 128)
_COMPILED_ON_CPU = True  # CPU meshes from the compiled builder (`mesh_kernel`); the tests switch it off to check
#                          the torch builders (used on other devices) on a CPU
CPU_CHUNK_BYTES = 1 << 19  # ... and about this many bytes of accumulated matrices per chunk (more draws for small n:
#                            measured 1.3x faster for 40 meshes x 64 draws at n = 16 and 10 x 64 at n = 32)


# --------------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MeshLayout:
    """Where every MZI and every loss-matched dummy section of an n-mode rectangular mesh sits (numpy arrays)."""

    n: int
    depth: int
    column: np.ndarray  # (K,) column of each MZI
    top: np.ndarray  # (K,) upper mode of each MZI
    dummy_column: np.ndarray  # (n_dummy,) column of each idle edge position (loss-matched dummy)
    dummy_mode: np.ndarray  # (n_dummy,) mode of each dummy
    up: np.ndarray  # (K,) index of the MZI above in the same column, K if none
    down: np.ndarray  # (K,) index of the MZI below in the same column, K if none


@lru_cache(maxsize=64)
def mesh_layout(n: int) -> MeshLayout:
    """Geometry of the n-mode Clements mesh: where MZIs, loss-matched dummies and crosstalk neighbours sit.

    Shared by the decomposition, the noise model and cost models (MZI and dummy counts); cached per n.
    """
    if n < 1:
        raise ValueError(f"a mesh needs at least one mode, got n={n}")
    depth = n if n >= 3 else n - 1
    cols: list[int] = []
    tops: list[int] = []
    dcols: list[int] = []
    dmodes: list[int] = []
    for c in range(depth):
        covered = set()
        for m in range(c % 2, n - 1, 2):
            cols.append(c)
            tops.append(m)
            covered.update((m, m + 1))
        for m in range(n):
            if m not in covered:
                dcols.append(c)
                dmodes.append(m)
    k_total = len(cols)
    index = {(c, m): k for k, (c, m) in enumerate(zip(cols, tops, strict=True))}
    up = np.array([index.get((c, m - 2), k_total) for c, m in zip(cols, tops, strict=True)], dtype=np.int64)
    down = np.array([index.get((c, m + 2), k_total) for c, m in zip(cols, tops, strict=True)], dtype=np.int64)
    return MeshLayout(
        n=n,
        depth=depth,
        column=np.array(cols, dtype=np.int64),
        top=np.array(tops, dtype=np.int64),
        dummy_column=np.array(dcols, dtype=np.int64),
        dummy_mode=np.array(dmodes, dtype=np.int64),
        up=up,
        down=down,
    )


# --------------------------------------------------------------------------------------------------- phases
def _as_f64(x: Any, shape: tuple[int, ...], name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().clone()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


@dataclass(frozen=True)
class MeshPhases:
    """Programmed phases of an n-mode Clements mesh (radians, float64).

    ``theta[k]``/``phi[k]``: internal/external phase of MZI ``k`` (MZIs ordered by column, then top mode; see
    ``column`` and ``top``); ``output_phase[j]``: phase shifter on output mode ``j`` after the last column.
    """

    n: int
    theta: Tensor
    phi: Tensor
    output_phase: Tensor
    column: Tensor = field(init=False, repr=False)
    top: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lay = mesh_layout(int(self.n))
        k_total = len(lay.column)
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "theta", _as_f64(self.theta, (k_total,), "theta"))
        object.__setattr__(self, "phi", _as_f64(self.phi, (k_total,), "phi"))
        object.__setattr__(self, "output_phase", _as_f64(self.output_phase, (self.n,), "output_phase"))
        object.__setattr__(self, "column", torch.from_numpy(lay.column.copy()))
        object.__setattr__(self, "top", torch.from_numpy(lay.top.copy()))

    @property
    def n_mzi(self) -> int:
        """Number of MZIs, n(n-1)/2."""
        return int(self.theta.shape[0])

    @property
    def depth(self) -> int:
        """Number of MZI columns (optical depth): n for n >= 3."""
        return mesh_layout(self.n).depth


@dataclass(frozen=True, eq=False)
class MeshStack:
    """Programmed phases of ``M`` meshes of the same size ``n``, stacked (radians, float64).

    ``theta``/``phi``: (M, n_mzi), ``output_phase``: (M, n), each row laid out as in :class:`MeshPhases`.  Build one
    with :meth:`of`.  A stack remembers what depends only on its phases and on the systematic part of a noise model
    (phases quantised, shifted by crosstalk and laid out in gate-table order), so repeated :func:`mesh_matrices`
    calls on the same stack (e.g. one per Monte-Carlo evaluation of a trained model) only sample and build.
    """

    n: int
    theta: Tensor
    phi: Tensor
    output_phase: Tensor
    _nominal: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k_total = len(mesh_layout(int(self.n)).column)
        object.__setattr__(self, "n", int(self.n))
        theta = torch.as_tensor(self.theta)
        if theta.dim() != 2 or theta.shape[0] < 1:
            raise ValueError(f"theta must have shape (meshes >= 1, {k_total}), got {tuple(theta.shape)}")
        m = int(theta.shape[0])
        object.__setattr__(self, "theta", _as_f64(theta, (m, k_total), "theta"))
        object.__setattr__(self, "phi", _as_f64(self.phi, (m, k_total), "phi"))
        object.__setattr__(self, "output_phase", _as_f64(self.output_phase, (m, self.n), "output_phase"))

    @classmethod
    def of(cls, phases: Sequence[MeshPhases]) -> MeshStack:
        """Stack meshes of one size (at least one)."""
        phases = list(phases)
        if not phases:
            raise ValueError("a mesh stack needs at least one mesh")
        n = phases[0].n
        if any(p.n != n for p in phases):
            raise ValueError(f"all meshes of a stack must have the same size, got {sorted({p.n for p in phases})}")
        return cls(
            n,
            torch.stack([p.theta for p in phases]),
            torch.stack([p.phi for p in phases]),
            torch.stack([p.output_phase for p in phases]),
        )

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    def __getitem__(self, index: int) -> MeshPhases:
        return MeshPhases(self.n, self.theta[index], self.phi[index], self.output_phase[index])

    @property
    def depth(self) -> int:
        """Number of MZI columns of every mesh."""
        return mesh_layout(self.n).depth


# --------------------------------------------------------------------------------------------------- decomposition
def _null_right(a: complex, b: complex) -> tuple[float, float]:
    """theta, phi such that [a, b] . T(theta, phi)^dagger has a zero first entry."""
    return 2.0 * math.atan2(abs(b), abs(a)), (cmath.phase(a) - cmath.phase(b) + math.pi) % TWO_PI


def _null_left(a: complex, b: complex) -> tuple[float, float]:
    """theta, phi such that T(theta, phi) . [a, b]^T has a zero second entry."""
    return 2.0 * math.atan2(abs(a), abs(b)), (cmath.phase(b) - cmath.phase(a)) % TWO_PI


def _mzi_2x2(theta: float, phi: float, dagger: bool = False) -> tuple[tuple[complex, complex], ...]:
    """Ideal MZI transfer T = i e^{i theta/2} [[e^{i phi} s, c], [e^{i phi} c, -s]] (s, c of theta/2), or T^dagger."""
    g = 1j * cmath.exp(0.5j * theta)
    s, c = math.sin(0.5 * theta), math.cos(0.5 * theta)
    ge = g * cmath.exp(1j * phi)
    if dagger:
        return ((ge * s).conjugate(), (ge * c).conjugate()), ((g * c).conjugate(), -(g * s).conjugate())
    return (ge * s, g * c), (ge * c, -g * s)


def clements_decompose(u: Any) -> MeshPhases:
    """Phases of the rectangular (Clements) mesh that realises the unitary ``u``; exact to rounding error.

    Follows Clements et al. (Optica 2016): null the lower-left triangle by alternating MZIs applied from the right
    and from the left, then move the left ones through the remaining diagonal.  ``u``: numpy array or torch tensor.
    """
    mat = u.detach().cpu().numpy() if isinstance(u, Tensor) else np.asarray(u)
    mat = np.array(mat, dtype=np.complex128)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {mat.shape}")
    n = mat.shape[0]
    dev = np.abs(mat @ mat.conj().T - np.eye(n)).max() if n else 0.0
    if dev > 1e-6:  # far above float64 rounding of any genuine unitary, far below any non-unitary input
        raise ValueError(f"matrix is not unitary (max |U U^dagger - I| = {dev:.2e})")
    lay = mesh_layout(n)
    # working copy with one padding column: a power-of-two row stride makes column updates thrash the cache
    w = np.zeros((n, n + 1), dtype=np.complex128)[:, :n]
    w[:] = mat
    wt = w.T  # wt[k] is column k of w; updates are elementwise: tiny BLAS calls only add threading overhead
    right: list[tuple[int, float, float]] = []  # (top mode, theta, phi), in order of application to w
    left: list[tuple[int, float, float]] = []
    for i in range(n - 1):
        if i % 2 == 0:
            for j in range(i + 1):
                r, m = n - 1 - j, i - j
                th, ph = _null_right(complex(w[r, m]), complex(w[r, m + 1]))
                (t00, t01), (t10, t11) = _mzi_2x2(th, ph, dagger=True)  # columns (m, m+1) times T^dagger
                col_m = wt[m].copy()
                wt[m] = col_m * t00 + wt[m + 1] * t10
                wt[m + 1] = col_m * t01 + wt[m + 1] * t11
                right.append((m, th, ph))
        else:
            for j in range(1, i + 2):
                r = n + j - i - 2  # row that gets nulled (lower row of the pair)
                c = j - 1
                m = r - 1
                th, ph = _null_left(complex(w[m, c]), complex(w[r, c]))
                (t00, t01), (t10, t11) = _mzi_2x2(th, ph)  # rows (m, m+1) times T from the left
                row_m = w[m].copy()
                w[m] = t00 * row_m + t01 * w[r]
                w[r] = t10 * row_m + t11 * w[r]
                left.append((m, th, ph))
    diag = np.angle(np.diag(w)).copy()
    # u = L^-1 D R^-1 with L = T_lK ... T_l1 and R = T_r1^+ T_r2^+ ...; move each T_l^+ through D:
    # T(theta, phi)^+ diag(e^{ia}, e^{ib}) = diag(-e^{-i(theta+phi)} e^{ib}, -e^{-i theta} e^{ib}) T(theta, a - b)
    moved: list[tuple[int, float, float]] = []
    for m, th, ph in reversed(left):
        a, b = diag[m], diag[m + 1]
        moved.append((m, th, float((a - b) % TWO_PI)))
        diag[m] = b - th - ph + math.pi
        diag[m + 1] = b - th + math.pi
    # order in which light meets them: R^-1 = ... T_r2 T_r1 acts first (T_r1 first), then the moved left ones
    # (T'_lK first, as they were reversed above).
    sequence = right + moved
    last = np.full(n, -1, dtype=np.int64)
    slot = {(int(c), int(m)): k for k, (c, m) in enumerate(zip(lay.column, lay.top, strict=True))}
    theta = np.zeros(len(lay.column))
    phi = np.zeros(len(lay.column))
    for m, th, ph in sequence:
        col = int(max(last[m], last[m + 1]) + 1)
        last[m] = last[m + 1] = col
        k = slot.get((col, m))
        if k is None:  # cannot happen for the Clements ordering; guards the bookkeeping
            raise RuntimeError(f"MZI on modes ({m}, {m + 1}) scheduled in column {col}, not a mesh position")
        theta[k], phi[k] = th, ph
    return MeshPhases(n=n, theta=theta, phi=phi, output_phase=np.mod(diag, TWO_PI))


@lru_cache(maxsize=64)
def _decompose_plan(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The nulling sequence of :func:`clements_decompose` for n modes, and where each MZI lands in the mesh.

    Per step, in nulling order: from the right (bool), upper mode m, row (right) or column (left) of the entry it
    nulls, and its slot in ``theta``/``phi``: light meets the right MZIs first (in nulling order), then the left
    ones moved through the diagonal (last nulled first), each in the first column after those of its two modes.
    """
    steps: list[tuple[bool, int, int]] = []
    for i in range(n - 1):
        if i % 2 == 0:
            steps += [(True, i - j, n - 1 - j) for j in range(i + 1)]
        else:
            steps += [(False, n + j - i - 3, j - 1) for j in range(1, i + 2)]
    lay = mesh_layout(n)
    where = {(int(c), int(m)): k for k, (c, m) in enumerate(zip(lay.column, lay.top, strict=True))}
    right = [s for s, step in enumerate(steps) if step[0]]
    left = [s for s, step in enumerate(steps) if not step[0]]
    last = np.full(n, -1, dtype=np.int64)
    slot = np.zeros(len(steps), dtype=np.int64)
    for s in right + left[::-1]:
        m = steps[s][1]
        col = int(max(last[m], last[m + 1]) + 1)
        last[m] = last[m + 1] = col
        k = where.get((col, m))
        if k is None:  # cannot happen for the Clements ordering; guards the bookkeeping
            raise RuntimeError(f"MZI on modes ({m}, {m + 1}) scheduled in column {col}, not a mesh position")
        slot[s] = k
    from_right = np.array([step[0] for step in steps], dtype=np.bool_)
    mode = np.array([step[1] for step in steps], dtype=np.int64)
    pivot = np.array([step[2] for step in steps], dtype=np.int64)
    return from_right, mode, pivot, slot


def clements_decompose_many(us: Any) -> MeshStack:
    """Phases of the meshes that realise ``M`` unitaries of one size, (M, n, n) -> :class:`MeshStack`.

    The algorithm of :func:`clements_decompose` (equal to per-matrix calls to rounding error), for the whole stack
    in one call to a compiled loop (:mod:`uhnas.hardware.mzi.decompose_kernel`, Numba) that nulls one matrix after
    the other in place; the nulling sequence and the column schedule depend only on n and are computed once per n.
    Far faster than per-matrix calls for many small meshes, e.g. the blocks of a layer.
    """
    from uhnas.hardware.mzi.decompose_kernel import decompose_stack  # compiled on first use (Numba)

    mats = us.detach().cpu().numpy() if isinstance(us, Tensor) else np.asarray(us)
    mats = np.array(mats, dtype=np.complex128)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2] or mats.shape[0] < 1:
        raise ValueError(f"expected a stack of square matrices (M >= 1, n, n), got shape {mats.shape}")
    count, n = mats.shape[0], mats.shape[1]
    dev = np.abs(mats @ mats.conj().transpose(0, 2, 1) - np.eye(n)).max() if n else 0.0
    if dev > 1e-6:  # as clements_decompose
        raise ValueError(f"matrix is not unitary (max |U U^dagger - I| = {dev:.2e})")
    k_total = len(mesh_layout(n).column)
    theta, phi, output = np.zeros((count, k_total)), np.zeros((count, k_total)), np.zeros((count, n))
    decompose_stack(mats, *_decompose_plan(n), theta, phi, output)
    return MeshStack(n, theta, phi, output)


# --------------------------------------------------------------------------------------------------- noise
@dataclass(frozen=True)
class MeshNoise:
    """Non-idealities of a mesh; every field defaults to off.

    phase_std: std of the Gaussian error added to every phase shifter, resampled per draw (rad).
    phase_bits: quantise every programmed phase to this many bits over [0, 2 pi) before errors (None: exact).
    crosstalk: thermal crosstalk coefficient gamma: each shifter's phase gains gamma x the programmed phases
        (wrapped to [0, 2 pi), i.e. proportional to heater power) of its nearest neighbours: the same-kind shifters
        (theta with theta, phi with phi) of the MZIs directly above and below in the same column; for output phase
        shifters, the adjacent modes' output shifters.
    loss_db_per_mzi: nominal insertion loss of every MZI (and of every loss-matched dummy section) (dB).
    loss_db_std: device-to-device std of that loss, fixed per chip (dB; the sampled loss is clipped at 0).
    coupler_error_std: std of each directional coupler's power splitting ratio around 0.5, fixed per chip
        (clipped to [0, 1]).
    """

    phase_std: float = 0.0
    phase_bits: int | None = None
    crosstalk: float = 0.0
    loss_db_per_mzi: float = 0.0
    loss_db_std: float = 0.0
    coupler_error_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("phase_std", "loss_db_per_mzi", "loss_db_std", "coupler_error_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.phase_bits is not None and int(self.phase_bits) < 1:
            raise ValueError(f"phase_bits must be >= 1 or None, got {self.phase_bits}")


@dataclass(frozen=True)
class ChipErrors:
    """Fabrication errors of one or more chips (leading dimension ``chips``), fixed across draws of one chip.

    coupler_ratio: (chips, n_mzi, 2) power cross-coupling ratio of each MZI's first and second coupler.
    mzi_loss_db: (chips, n_mzi) insertion loss of each MZI (dB).
    dummy_loss_db: (chips, n_dummy) loss of each loss-matched dummy section at idle edge positions (dB).
    """

    n: int
    coupler_ratio: Tensor
    mzi_loss_db: Tensor
    dummy_loss_db: Tensor

    @property
    def chips(self) -> int:
        """Number of chips held."""
        return int(self.coupler_ratio.shape[0])


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard normal samples for error models, computed in float32 on the CPU: the counter-based discretised
    normal (`uhnas.hardware.counter_rng`, ~6x faster than torch's normal_) of a stream seeded by one draw from
    ``generator``."""
    out = counter_normals(seed_of(generator, 1)[0], math.prod(shape)).view(shape)
    return out if dtype == torch.float32 else out.to(dtype)


def sample_chip(
    n: int, noise: MeshNoise | None = None, generator: torch.Generator | None = None, *, draws: int | None = None
) -> ChipErrors:
    """Sample fabrication errors (coupler ratios, per-MZI loss) for one chip, or ``draws`` independent chips.

    Sampled values are float32 (their spread, ~1e-2, dwarfs float32 rounding), their normals from a
    discretised-normal stream seeded by one draw from ``generator`` per error kind (`uhnas.hardware.counter_rng`);
    error-free values are exact float64 nominals, so a mesh without spread stays exact in double precision. A
    ChipErrors built by hand may use any real dtype.
    """
    noise = noise or MeshNoise()
    lay = mesh_layout(n)
    chips = 1 if draws is None else int(draws)
    k_total, n_dummy = len(lay.column), len(lay.dummy_column)
    if noise.coupler_error_std > 0:
        z = _normal((chips, k_total, 2), generator, torch.float32)
        ratio = z.mul_(noise.coupler_error_std).add_(NOMINAL_SPLIT).clamp_(0.0, 1.0)
    else:
        ratio = torch.full((chips, k_total, 2), NOMINAL_SPLIT, dtype=torch.float64)
    if noise.loss_db_std > 0:
        z = _normal((chips, k_total + n_dummy), generator, torch.float32)
        loss = z.mul_(noise.loss_db_std).add_(noise.loss_db_per_mzi).clamp_min_(0.0)
    else:
        loss = torch.full((chips, k_total + n_dummy), float(noise.loss_db_per_mzi), dtype=torch.float64)
    return ChipErrors(n=n, coupler_ratio=ratio, mzi_loss_db=loss[:, :k_total], dummy_loss_db=loss[:, k_total:])


# --------------------------------------------------------------------------------------------------- effective phases
def _programmed(phases: MeshPhases | MeshStack, noise: MeshNoise) -> tuple[Tensor, Tensor, Tensor]:
    """Programmed phases wrapped to [0, 2 pi) and, if asked, quantised to ``phase_bits`` bits (any leading dims)."""
    out = []
    for p in (phases.theta, phases.phi, phases.output_phase):
        p = torch.remainder(p, TWO_PI)
        if noise.phase_bits is not None:
            step = TWO_PI / (1 << int(noise.phase_bits))
            p = torch.remainder(torch.round(p / step) * step, TWO_PI)
        out.append(p)
    return out[0], out[1], out[2]


def _with_crosstalk(theta: Tensor, phi: Tensor, out: Tensor, gamma: float, lay: MeshLayout) -> tuple[Tensor, ...]:
    """Add gamma x (programmed phases of the nearest same-kind shifters) to every shifter (see MeshNoise).

    theta, phi: (..., n_mzi); out: (..., n).
    """
    if gamma == 0:
        return theta, phi, out
    up, down = torch.from_numpy(lay.up), torch.from_numpy(lay.down)
    res = []
    for p in (theta, phi):
        padded = torch.cat([p, p.new_zeros((*p.shape[:-1], 1))], -1)  # index K = "no neighbour"
        res.append(p + gamma * (padded[..., up] + padded[..., down]))
    nb = torch.zeros_like(out)
    nb[..., 1:] += out[..., :-1]
    nb[..., :-1] += out[..., 1:]
    res.append(out + gamma * nb)
    return res[0], res[1], res[2]


# --------------------------------------------------------------------------------------------------- plans
# The mesh is simulated on a ring of ``ring`` modes (an odd mesh gets a virtual mode, the tiled builder pads to a
# multiple of the tile width) over ``columns`` columns (padded with identities).  Ring slot j of column q joins
# modes (2j + q%2, 2j + q%2 + 1 mod ring); a slot is an MZI or an idle position (diagonal: the two modes' dummy
# loss, or 1 for virtual modes / padding columns).  Idle positions are the only ones across the ring seam, so the
# ring never couples mode n-1 to mode 0.


def _sizes(n: int, depth: int) -> tuple[int, int, int | None]:
    """Ring size, padded column count and tile width for an n-mode mesh (tile None: column by column).

    The tiled builder needs the ring and the column count to be multiples of the tile width (so that the last
    slab of every width is odd).
    """
    ring0 = n + n % 2
    if n < 12:  # small meshes: the plain column-by-column product is as fast and simpler
        return ring0, depth, None
    tile = 8  # measured fastest for n = 16 ... 128 (bench/mesh.py): wider tiles cost more elementwise work
    return -(-ring0 // tile) * tile, -(-depth // tile) * tile, tile


@dataclass(frozen=True)
class _Plan:
    """How the gate table of an n-mode mesh is laid out and consumed (see _make_plan)."""

    ring: int
    columns: int
    tile: int | None
    row_mzi: Tensor  # (R,) MZI held by each gate-table row; K for rows that are not MZIs
    fixed_rows: Tensor  # (F,) rows that are not MZIs: idle positions and identities
    fixed_amp: Tensor  # (F, 2) their diagonal, as indices into [dummy amplitudes..., 1]
    slot_row: Tensor  # (columns, ring // 2) row holding the gate of each ring slot


def _tile_children(tiles: list[tuple], s: int, ring: int, columns: int) -> list[tuple]:
    """Width-s/2 tiles feeding width-s tiles: [bottoms | lefts | rights | tops], each in the order of ``tiles``.

    Width-s storage holds the first slab's upward triangles ("A", j), diamond rows ("D", q, j), the last slab's
    downward triangles ("B", j) and identities ("I",).  A width-2s diamond is E(top) . (left (+) right) . E(bottom)
    of width-s diamonds from rows 2Q, 2Q+1, 2Q+2; A2s = E(D row 0) . (A (+) A); B2s = (B (+) B) . E(D last row).
    """
    h = s // 2
    w, qd = ring // h, 2 * columns // h - 1
    eye = ("I",)
    roles: list[list[tuple]] = [[], [], [], []]
    for t in tiles:
        if t[0] == "A":
            kids = (eye, ("A", 2 * t[1]), ("A", 2 * t[1] + 1), ("D", 0, 2 * t[1]))
        elif t[0] == "B":
            kids = (("D", qd - 1, 2 * t[1]), ("B", 2 * t[1]), ("B", 2 * t[1] + 1), eye)
        elif t[0] == "D":
            big_q, jb = t[1], 2 * t[2] + 1 - t[1] % 2
            kids = (
                ("D", 2 * big_q, jb),
                ("D", 2 * big_q + 1, jb),
                ("D", 2 * big_q + 1, (jb + 1) % w),
                ("D", 2 * big_q + 2, jb),
            )
        else:
            kids = (eye, eye, eye, eye)
        for r, k in zip(roles, kids, strict=True):
            r.append(k)
    return roles[0] + roles[1] + roles[2] + roles[3]


@lru_cache(maxsize=64)
def _make_plan(n: int) -> _Plan:
    """Gate-table layout for an n-mode mesh; for the tiled builder, rows are ordered so that no gather is needed.

    Tiled: the top-width tile list is [A | diamond rows | B] (the layers, in order); the list at each narrower
    width is [bottoms | lefts | rights | tops] of the list above, down to the gates themselves (width 2: the A
    tiles are column 0, diamond row q is column q + 1, B tiles and identities are identities).
    """
    lay = mesh_layout(n)
    k_total, n_dummy = len(lay.column), len(lay.dummy_column)
    ring, columns, tile = _sizes(n, lay.depth)
    half = ring // 2
    mzi = {(int(c), int(m)): k for k, (c, m) in enumerate(zip(lay.column, lay.top, strict=True))}
    dummy = {(int(c), int(m)): d for d, (c, m) in enumerate(zip(lay.dummy_column, lay.dummy_mode, strict=True))}
    if tile is None:
        rows: list[tuple[int, int] | None] = [(q, j) for q in range(columns) for j in range(half)]
    else:
        w, qd = ring // tile, 2 * columns // tile - 1
        tiles = [("A", j) for j in range(w)] + [("D", q, j) for q in range(qd) for j in range(w)]
        tiles += [("B", j) for j in range(w)]
        s = tile
        while s > 2:
            tiles = _tile_children(tiles, s, ring, columns)
            s //= 2
        rows = [(0, t[1]) if t[0] == "A" else (t[1] + 1, t[2]) if t[0] == "D" else None for t in tiles]
    row_mzi = np.full(len(rows), k_total, dtype=np.int64)
    slot_row = np.full((columns, half), -1, dtype=np.int64)
    fixed_rows: list[int] = []
    fixed_amp: list[tuple[int, int]] = []
    for r, slot in enumerate(rows):
        if slot is None:  # identity
            fixed_rows.append(r)
            fixed_amp.append((n_dummy, n_dummy))
            continue
        q, j = slot
        slot_row[q, j] = r
        t = 2 * j + q % 2
        b = (t + 1) % ring
        if (q, t) in mzi and b == t + 1:
            row_mzi[r] = mzi[(q, t)]
        else:  # idle position: a dummy section (real mode, real column) or nothing (amplitude 1)
            fixed_rows.append(r)
            fixed_amp.append((dummy.get((q, t), n_dummy), dummy.get((q, b), n_dummy)))
    if (slot_row < 0).any() or sorted(row_mzi[row_mzi < k_total].tolist()) != list(range(k_total)):
        raise RuntimeError(f"inconsistent mesh plan for n={n}")  # guards the tiling bookkeeping
    return _Plan(
        ring=ring,
        columns=columns,
        tile=tile,
        row_mzi=torch.from_numpy(row_mzi),
        fixed_rows=torch.tensor(fixed_rows, dtype=torch.int64),
        fixed_amp=torch.tensor(fixed_amp, dtype=torch.int64).view(-1, 2),
        slot_row=torch.from_numpy(slot_row),
    )


# --------------------------------------------------------------------------------------------------- gate table
def _gate_table(
    theta: Tensor,
    phi: Tensor,
    couplers: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    amp: Tensor | None,
    fixed_rows: Tensor,
    fixed_diag: Tensor,
    cdtype: torch.dtype,
    conj: bool = False,
) -> Tensor:
    """Every 2x2 transfer of the plan's gate table, as (2, 2, rows, *batch).

    MZI rows: amp . B(k2) . diag(e^{i theta}, 1) . B(k1) . diag(e^{i phi}, 1), i.e. with c_j = sqrt(1 - k_j),
    r_j = sqrt(k_j):  T00 = amp (c1 c2 e^{i(theta+phi)} - r1 r2 e^{i phi}),  T01 = i amp (r1 c2 e^{i theta} + c1 r2),
    T10 = i amp (c1 r2 e^{i(theta+phi)} + r1 c2 e^{i phi}),  T11 = amp (c1 c2 - r1 r2 e^{i theta}).
    theta, phi: (rows, *batch) in the real dtype of ``cdtype`` (any batch dims of size 1 broadcast); couplers:
    (c1 c2, r1 r2, r1 c2, c1 r2), each (rows, *batch), or None (ideal 50:50); amp: (rows, *batch) field amplitude
    or None (lossless).  Rows ``fixed_rows`` are diagonal with amplitudes ``fixed_diag`` (F, 2, *batch).
    ``conj``: store complex conjugates.
    """
    rows = theta.shape[0]
    extra = [c.shape[1:] for c in couplers] if couplers is not None else []
    extra += [amp.shape[1:]] if amp is not None else []
    # numpy's broadcast_shapes: torch's imports torch._refs on first use (~0.3-0.6 s per process)
    batch = np.broadcast_shapes(theta.shape[1:], phi.shape[1:], fixed_diag.shape[2:], *extra)
    table = torch.empty((2, 2, rows, *batch), dtype=cdtype, device=theta.device)
    a = theta.new_ones((1,) * theta.dim()) if amp is None else amp
    if couplers is None:
        cc = rr = rc = cr = 0.5 * a  # 50:50 couplers: every product of two coupler amplitudes is 1/2
    else:
        cc, rr, rc, cr = (c * a for c in couplers)
    both = theta + phi
    ct, st, cp, sp = torch.cos(theta), torch.sin(theta), torch.cos(phi), torch.sin(phi)
    cb, sb = torch.cos(both), torch.sin(both)  # (as cheap as two products each; contiguous temporaries, then
    re, im = theta.new_empty((rows, *batch)), theta.new_empty((rows, *batch))  # one interleave: measured fastest)
    # imaginary parts negated in place when conjugates are asked for (cheaper than conjugating the table)
    torch.mul(cc, cb, out=re).addcmul_(rr, cp, value=-1.0)  # T00
    if conj:
        torch.mul(rr, sp, out=im).addcmul_(cc, sb, value=-1.0)
    else:
        torch.mul(cc, sb, out=im).addcmul_(rr, sp, value=-1.0)
    torch.complex(re, im, out=table[0, 0])
    torch.mul(rc, st, out=re).neg_()  # T01
    torch.mul(rc, ct, out=im).add_(cr)
    torch.complex(re, im.neg_() if conj else im, out=table[0, 1])
    torch.mul(cr, sb, out=re).addcmul_(rc, sp).neg_()  # T10
    torch.mul(cr, cb, out=im).addcmul_(rc, cp)
    torch.complex(re, im.neg_() if conj else im, out=table[1, 0])
    torch.mul(rr, ct, out=re).neg_().add_(cc)  # T11
    torch.mul(rr, st, out=im)
    torch.complex(re, im if conj else im.neg_(), out=table[1, 1])
    if fixed_rows.numel():
        fixed = table.new_zeros((2, 2, fixed_rows.shape[0], *batch))
        fixed[0, 0] = fixed_diag[:, 0]
        fixed[1, 1] = fixed_diag[:, 1]
        table.index_copy_(2, fixed_rows, fixed)
    return table


# --------------------------------------------------------------------------------------------------- builders
def _build_reference(table: Tensor, plan: _Plan, screen: Tensor, conjugated: bool = False) -> Tensor:
    """Accumulate the ring mesh column by column (one batched 2x2 update per column), then the output screen."""
    gates = table.permute(3, 2, 0, 1)[:, plan.slot_row.to(table.device)]  # (batch, columns, ring/2, 2, 2)
    if conjugated:
        gates = gates.conj()
    ring = plan.ring
    batch = gates.shape[0]
    m = torch.eye(ring, dtype=table.dtype, device=table.device).expand(batch, ring, ring).clone()
    for q in range(plan.columns):
        tops = torch.arange(q % 2, ring, 2, device=table.device)
        bots = (tops + 1) % ring
        g = gates[:, q]
        mt, mb = m[:, tops], m[:, bots]
        m[:, tops] = g[:, :, 0, 0, None] * mt + g[:, :, 0, 1, None] * mb
        m[:, bots] = g[:, :, 1, 0, None] * mt + g[:, :, 1, 1, None] * mb
    return m * screen[..., None]


def _build_columns(table: Tensor, plan: _Plan, screen: Tensor) -> Tensor:
    """The ring mesh's matrix for a column plan, as (ring, ring, batch): the batch is the innermost axis.

    Same product as :func:`_build_reference` (column by column, then the output screen), laid out for many small
    meshes at once: column 0 is written as a block diagonal, every later column is a 2x2 update of row pairs
    (even columns: rows (2j, 2j+1); odd columns: rows (2j+1, 2j+2), plus the idle seam pair (ring-1, 0), a
    diagonal), elementwise over contiguous (ring, batch) planes, ping-ponging between two buffers.  The output
    screen is folded into the last column's gates.  ``table``: (2, 2, rows, batch) in column-plan row order
    (not modified); ``screen``: (batch, ring).
    """
    ring, half, columns = plan.ring, plan.ring // 2, plan.columns
    batch = table.shape[-1]
    scr = screen.t().expand(ring, batch)  # (ring, batch)
    bufs = [table.new_zeros((ring, ring, batch)), table.new_empty((ring, ring, batch))]
    if columns == 0:
        torch.diagonal(bufs[0], dim1=0, dim2=1).copy_(scr.t())
        return bufs[0]

    def gates(q: int) -> Tensor:  # (2, 2, half, batch); the last column carries the output screen
        g = table[:, :, q * half : (q + 1) * half]
        if q == columns - 1:
            tops = torch.arange(q % 2, ring, 2, device=table.device)
            g = g * torch.stack([scr[tops], scr[(tops + 1) % ring]])[:, None]
        return g

    g0 = gates(0)
    blocks = torch.diagonal(bufs[0].view(half, 2, half, 2, batch), dim1=0, dim2=2)  # (2, 2, batch, half)
    blocks.copy_(g0.transpose(2, 3))
    cur = 0
    for q in range(1, columns):
        src, dst = bufs[cur], bufs[1 - cur]
        g = gates(q)[:, :, :, None]  # (2, 2, half, 1, batch)
        if q % 2 == 0:
            pairs_src, pairs_dst = src.view(half, 2, ring, batch), dst.view(half, 2, ring, batch)
        else:  # seam pair (ring-1, 0) is idle: diagonal
            torch.mul(src[ring - 1], g[0, 0, half - 1], out=dst[ring - 1])
            torch.mul(src[0], g[1, 1, half - 1], out=dst[0])
            pairs_src = src[1 : ring - 1].view(half - 1, 2, ring, batch)
            pairs_dst = dst[1 : ring - 1].view(half - 1, 2, ring, batch)
            g = g[:, :, : half - 1]
        top, bot = pairs_src[:, 0], pairs_src[:, 1]
        torch.mul(top, g[0, 0], out=pairs_dst[:, 0]).addcmul_(bot, g[0, 1])
        torch.mul(bot, g[1, 1], out=pairs_dst[:, 1]).addcmul_(top, g[1, 0])
        cur = 1 - cur
    return bufs[cur]


# Tiled builder.  On the ring, a slab of s/2 consecutive columns splits into upward triangles A (row windows
# starting at a multiple of s, plus s/2 on odd slabs) and downward triangles B (the other residue).  The B part of
# slab q followed by the A part of slab q+1 on the same window is a "diamond" of width s.  The mesh is
#     M = B_last . D_{last} ... D_1 . D_0 . A_first   ("layers"; row q of diamonds has windows j s + (1 - q%2) s/2)
# and a width-2s diamond is four width-s ones, D2s = E(top) . (left (+) right) . E(bottom) (see _tile_children).
# Storage at width s is one tensor (s, s, T, batch), tiles in the plan's order, so every doubling is elementwise
# work on contiguous (T, batch) planes of four contiguous chunks.  The top-width layers are then applied to the
# accumulated matrix as real-block batched matrix products.


def _outer_acc(dst: Tensor, a: Tensor, b: Tensor) -> None:
    """dst = a @ b over the two leading (matrix) axes, elementwise over the trailing (tile, batch) axes."""
    torch.mul(a[:, 0:1], b[0:1], out=dst)
    for k in range(1, a.shape[1]):
        dst.addcmul_(a[:, k : k + 1], b[k : k + 1])


def _level_up(src: Tensor) -> Tensor:
    """Width-2s storage from width-s storage: x = E(top) . (left (+) right) . E(bottom) for every output tile."""
    s = src.shape[0]
    h = s // 2
    bot, left, right, top = src.chunk(4, dim=2)
    x = src.new_empty((2 * s, 2 * s, *bot.shape[2:]))
    x[:s, :h] = left[:, :h]  # (left (+) right) . E(bottom) ...
    _outer_acc(x[:s, h : 3 * h], left[:, h:], bot[:h])
    x[:s, 3 * h :] = 0
    x[s:, :h] = 0
    _outer_acc(x[s:, h : 3 * h], right[:, :h], bot[h:])
    x[s:, 3 * h :] = right[:, h:]
    mid = x[h : 3 * h].clone()  # ... then E(top) on the middle rows
    _outer_acc(x[h : 3 * h], top, mid)
    return x


def _transpose_tiles(x: Tensor) -> Tensor:
    """(r, c, T, batch) -> (T, batch, r, c) contiguous, via one 2D transpose (complex64 viewed as float64)."""
    r, c, t, b = x.shape
    if x.dtype == torch.complex64:
        flat = x.reshape(r * c, t * b).view(torch.float64)
        return flat.t().contiguous().view(torch.complex64).view(t, b, r, c)
    return x.permute(2, 3, 0, 1).contiguous()


def _build_tiles(table: Tensor, plan: _Plan, screen: Tensor) -> Tensor:
    """The ring mesh's matrix (batch, ring, ring) from the plan's conjugated gate table (2, 2, rows, batch).

    Tiles are built from conjugated gates, so they come out conjugated, as the real-block form needs.
    ``screen``: (batch or 1, ring) output phase factors (1 on virtual modes), folded into the last layer.
    """
    ring = plan.ring
    x = table
    while x.shape[0] < (plan.tile or 0):
        x = _level_up(x)
    s, batch = x.shape[0], x.shape[3]
    h, w = s // 2, ring // s
    n_layers = x.shape[2] // w
    # output phase screen on the last layer (windows at j s): rows i of window j are ring mode j s + i
    x[:, :, (n_layers - 1) * w :] *= screen.conj().view(-1, w, s).permute(2, 1, 0)[:, None]
    # Real-block form of layers 1..: rows (2i, 2i+1) = complex rows (conj F_i, i conj F_i) viewed as real, i.e.
    # [[re, -im], [im, re]], acting on the accumulated matrix stored with (re, im) rows interleaved.  Factors are
    # stored in (draw, window) order; layers at windows j s + s/2 (odd layers) are shifted by one block so that the
    # block across the ring seam (block-diagonal: seam positions are idle) straddles two draws' rows.
    xt = _transpose_tiles(x[:, :, w:]).view(n_layers - 1, w, batch, s, s)
    fac = x.new_empty((n_layers - 1, batch * w + 1, s, 2, s))
    if fac.dtype == torch.complex64:  # plain 8-byte copies
        fac_v, xt_v = fac.view(torch.float64), xt.view(torch.float64)
    else:
        fac_v, xt_v = fac, xt
    fac_v[1::2, : batch * w].view(-1, batch, w, s, 2, s)[:, :, :, :, 0].copy_(xt_v[1::2].transpose(1, 2))
    fac_v[0::2, 1:].view(-1, batch, w, s, 2, s)[:, :, :, :, 0].copy_(xt_v[0::2].transpose(1, 2))
    torch.mul(fac[:, :, :, 0], 1j, out=fac[:, :, :, 1])
    rb = torch.view_as_real(fac).view(n_layers - 1, batch * w + 1, 2 * s, 2 * s)
    odd = rb[0::2]
    seams = odd[:, w::w]  # block k w (k >= 1) holds draw k-1's seam block; its lower-right belongs to draw k
    odd[:, 0 : batch * w : w, s:, s:] = seams[:, :, s:, s:].clone()
    odd[:, 0, :s] = 0
    odd[:, 0, s:, :s] = 0
    first = x[:, :, :w]  # (s, s, w, batch): block-diagonal first layer (conjugated)
    rdtype = rb.dtype
    out = x.new_empty((batch, ring, ring))
    # on a CPU, apply the layers chunk of draws by chunk so that the accumulated matrices stay in cache; 16 draws
    # per chunk measured fastest at n = 64 and n = 128 (vs 4, 8, 64), more for smaller n; elsewhere all at once
    per_draw = (ring + s) * 2 * ring * rb.element_size()
    chunk = max(CPU_DRAW_CHUNK, CPU_CHUNK_BYTES // per_draw) if x.device.type == "cpu" else batch
    full = [x.new_empty((min(chunk, batch) * ring + s, 2, ring), dtype=rdtype) for _ in range(2)]
    for c0 in range(0, batch, chunk):
        d = min(chunk, batch - c0)
        rows = d * ring
        # buffer 0 must be zero off the first layer's blocks and on its pad rows (layers at j s never write the
        # pads); layers at j s + s/2 write every row of buffer 1, layers at j s read it only between the pads
        bufs = [full[0][: rows + s].zero_(), full[1][: rows + s]]
        diag = torch.diagonal(bufs[0][h : h + rows].view(d, w, s, 2, w, s), dim1=1, dim2=4)  # (d, s, 2, s, w)
        blk = first[:, :, :, c0 : c0 + d]
        diag[:, :, 0] = blk.real.permute(3, 0, 1, 2)
        torch.neg(blk.imag.permute(3, 0, 1, 2), out=diag[:, :, 1])
        cur = 0
        for layer in range(1, n_layers):
            f = rb[layer - 1]
            src, dst = bufs[cur], bufs[1 - cur]
            if layer % 2 == 0:  # windows at j s
                nb = d * w
                torch.bmm(
                    f[c0 * w : c0 * w + nb],
                    src[h : h + rows].view(nb, 2 * s, ring),
                    out=dst[h : h + rows].view(nb, 2 * s, ring),
                )
            else:  # windows at j s + s/2
                nb = d * w + 1
                torch.bmm(f[c0 * w : c0 * w + nb], src.view(nb, 2 * s, ring), out=dst.view(nb, 2 * s, ring))
            cur = 1 - cur
        v = bufs[cur][h : h + rows].view(d, ring, 2, ring)
        torch.complex(v[:, :, 0], v[:, :, 1], out=out[c0 : c0 + d])
    return out


# --------------------------------------------------------------------------------------------------- public builder
def _nominal_rows(stack: MeshStack, noise: MeshNoise, rdtype: torch.dtype, dev: torch.device) -> tuple[Tensor, ...]:
    """Programmed (quantised, crosstalk-shifted) phases in gate-table row order: theta, phi (rows, M, 1), output
    phases (n, M, 1); cached on the stack per (phase bits, crosstalk, dtype, device)."""
    key = (noise.phase_bits, float(noise.crosstalk), rdtype, dev)
    hit = stack._nominal.get(key)
    if hit is not None:
        return hit
    lay, plan = mesh_layout(stack.n), _make_plan(stack.n)
    theta, phi, out = _with_crosstalk(*_programmed(stack, noise), float(noise.crosstalk), lay)
    pad = theta.new_zeros((len(stack), 1))  # rows that are not MZIs read 0 (and are overwritten)
    rows = [torch.cat([x, pad], 1)[:, plan.row_mzi].t() for x in (theta, phi)]
    hit = tuple(x.to(device=dev, dtype=rdtype).contiguous()[..., None] for x in (*rows, out.t()))
    if len(stack._nominal) >= 8:
        stack._nominal.clear()
    stack._nominal[key] = hit
    return hit


def _chip_batch(chip: ChipErrors, meshes: int, n_draws: int) -> tuple[int, int]:
    """(mesh, draw) extents of a chip set: 1 chip for all, one per mesh, or one per mesh and draw (mesh-major)."""
    if chip.chips == 1:
        return 1, 1
    if chip.chips == meshes * n_draws:
        return meshes, n_draws
    if chip.chips == meshes:
        return meshes, 1
    raise ValueError(
        f"chip has chips={chip.chips}; expected 1, {meshes} or {meshes * n_draws} chips (one per mesh and draw)"
    )


def _sampled_chips(meshes: int, n_draws: int, draws_given: bool, noise: MeshNoise) -> int:
    """How many chips a mesh_matrices call samples: one per mesh and draw (mesh-major) if the noise has chip errors
    and there is more than one realisation, else the single nominal chip."""
    random_chip = noise.coupler_error_std > 0 or noise.loss_db_std > 0
    return meshes * n_draws if random_chip and (draws_given or meshes > 1) else 1


def _stack_chips(
    stack: MeshStack,
    n_draws: int,
    draws_given: bool,
    noise: MeshNoise,
    chip: ChipErrors | None,
    generator: torch.Generator | None,
) -> tuple[ChipErrors, int, int, bool, bool]:
    """The chips of a mesh_matrices call (sampled from ``generator`` unless given), their (mesh, draw) extents and
    whether they have coupler errors and loss."""
    n, meshes = stack.n, len(stack)
    if chip is None:
        chips = _sampled_chips(meshes, n_draws, draws_given, noise)
        chip = sample_chip(n, noise, generator, draws=None if chips == 1 else chips)
        has_coupler_error = noise.coupler_error_std > 0
        lossy = noise.loss_db_per_mzi > 0 or noise.loss_db_std > 0
    else:
        has_coupler_error = bool((chip.coupler_ratio != NOMINAL_SPLIT).any())
        lossy = bool((chip.mzi_loss_db != 0).any()) or bool((chip.dummy_loss_db != 0).any())
    if chip.n != n:
        raise ValueError(f"chip has n={chip.n}; expected n={n}")
    cm, cb = _chip_batch(chip, meshes, n_draws)
    return chip, cm, cb, has_coupler_error, lossy


def _phase_normals(seeds: np.ndarray, n_draws: int, k_total: int, n: int, rdtype: torch.dtype) -> Tensor:
    """Phase-noise samples (M, n_draws, 2 K + n) of every mesh's stream: per draw theta, phi, output phases
    (the samples the compiled builder draws, see `mesh_kernel`)."""
    per_draw = (2 * k_total + n + 3) // 4 * 4
    z = torch.stack([counter_normals(s, n_draws * per_draw, rdtype) for s in seeds])
    return z.view(len(seeds), n_draws, per_draw)[:, :, : 2 * k_total + n]


def _chip_values(
    chip: ChipErrors, has_coupler_error: bool, lossy: bool, rdtype: torch.dtype, dev: torch.device
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Per chip: the coupler amplitude products (4, chips, K) c1 c2, r1 r2, r1 c2, c1 r2 (None: ideal 50:50),
    the MZIs' field amplitudes (chips, K) and the dummy sections' (chips, n_dummy) (None: lossless)."""
    products = mzi_amp = dummy_amp = None
    if chip.coupler_ratio.shape[1] and has_coupler_error:
        ratio = chip.coupler_ratio.to(device=dev, dtype=rdtype)
        r, c = ratio.sqrt(), ratio.neg().add_(1).sqrt_()  # amplitude cross / through coupling of couplers 1, 2
        products = torch.stack(
            [c[..., 0] * c[..., 1], r[..., 0] * r[..., 1], r[..., 0] * c[..., 1], c[..., 0] * r[..., 1]]
        )
    if lossy:
        mzi_amp = chip.mzi_loss_db.to(device=dev, dtype=rdtype).mul(_DB_TO_AMP).exp_()
        dummy_amp = chip.dummy_loss_db.to(device=dev, dtype=rdtype).mul(_DB_TO_AMP).exp_()
    return products, mzi_amp, dummy_amp


def _prepare_stack(
    stack: MeshStack,
    n_draws: int,
    draws_given: bool,
    noise: MeshNoise,
    chip: ChipErrors | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    dev: torch.device,
) -> tuple[Tensor, Tensor, _Plan, int]:
    """Sample the errors and compute the gate table (2, 2, rows, M b) and output screen (M b, ring) of a stack.

    ``b`` (returned) is the number of realisations per mesh: ``n_draws`` when anything differs between draws,
    else 1 (the caller expands).  Generator order: chips for all meshes (one :func:`sample_chip` call for
    M x n_draws chips, mesh-major), then one phase-noise stream seed per mesh (see `_phase_normals`).
    """
    n, meshes = stack.n, len(stack)
    lay = mesh_layout(n)
    k_total = len(lay.column)
    chip, cm, cb, has_coupler_error, lossy = _stack_chips(stack, n_draws, draws_given, noise, chip, generator)
    plan = _make_plan(n)
    rows = plan.row_mzi.shape[0]
    rdtype = torch.float32 if dtype == torch.complex64 else torch.float64
    theta, phi, out_phase = _nominal_rows(stack, noise, rdtype, dev)  # (rows, M, 1), (rows, M, 1), (n, M, 1)
    pick = plan.row_mzi.clamp(max=max(k_total - 1, 0)).to(dev)  # rows that are not MZIs read MZI 0, overwritten
    if noise.phase_std > 0:  # the compiled builder's samples, moved to gate-table rows (non-MZI rows unused)
        z = _phase_normals(seed_of(generator, meshes), n_draws, k_total, n, rdtype).to(dev)
        std = float(noise.phase_std)
        theta = theta + std * z[:, :, pick].permute(2, 0, 1)
        phi = phi + std * z[:, :, k_total + pick].permute(2, 0, 1)
        out_phase = out_phase + std * z[:, :, 2 * k_total :].permute(2, 0, 1)
    per_mesh = max(theta.shape[2], cb)
    products, mzi_amp, dummy_amp = _chip_values(chip, has_coupler_error, lossy, rdtype, dev)
    couplers = None
    if products is not None:  # (rows, cm, cb) each
        couplers = tuple(x.index_select(1, pick).t().reshape(rows, cm, cb) for x in products)
    amp = None if mzi_amp is None or not k_total else mzi_amp.index_select(1, pick).t().reshape(rows, cm, cb)
    n_dummy = chip.dummy_loss_db.shape[1]
    amp_vec = torch.ones((n_dummy + 1, cm, cb), dtype=rdtype, device=dev)
    if dummy_amp is not None:  # (n_dummy + 1, cm, cb): dummy sections, then "no element"
        amp_vec[:-1] = dummy_amp.t().view(n_dummy, cm, cb)
    fixed_diag = amp_vec[plan.fixed_amp.to(dev)]  # (F, 2, cm, cb)
    if theta.shape[1:] != (meshes, per_mesh):  # the table's batch axes must be (M, b) for the flat view below
        theta = theta.expand(rows, meshes, per_mesh)
    table = _gate_table(
        theta, phi, couplers, amp, plan.fixed_rows.to(dev), fixed_diag, dtype, conj=plan.tile is not None
    ).view(2, 2, rows, meshes * per_mesh)
    screen = torch.ones((meshes, per_mesh, plan.ring), dtype=dtype, device=dev)
    screen[:, :, :n] = torch.polar(torch.ones_like(out_phase), out_phase).permute(1, 2, 0)
    return table, screen.view(meshes * per_mesh, plan.ring), plan, per_mesh


def _nominal_rotations(stack: MeshStack, noise: MeshNoise, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """cos and sin of the programmed (quantised, crosstalk-shifted) phases: theta, phi (M, 2, K), output (M, 2, n);
    cached on the stack per (phase bits, crosstalk, dtype). Evaluated in ``dtype`` (numpy's float32 sine and cosine
    are vectorised, 7x faster than float64's; the phase's float32 rounding moves them by < 2.5e-7)."""
    key = (noise.phase_bits, float(noise.crosstalk), np.dtype(dtype).name, "rotations")
    hit = stack._nominal.get(key)
    if hit is None:
        phases = _with_crosstalk(*_programmed(stack, noise), float(noise.crosstalk), mesh_layout(stack.n))
        hit = tuple(np.stack([np.cos(q), np.sin(q)], 1) for q in (p.numpy().astype(dtype) for p in phases))
        if len(stack._nominal) >= 8:
            stack._nominal.clear()
        stack._nominal[key] = hit
    return hit


@lru_cache(maxsize=16)
def _column_bounds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """First MZI and first dummy section of every column of the n-mode mesh, (depth + 1,) each."""
    lay = mesh_layout(n)
    cols = np.arange(lay.depth + 1)
    return np.searchsorted(lay.column, cols), np.searchsorted(lay.dummy_column, cols)


def compiled_inputs(
    stack: MeshStack,
    n_draws: int,
    draws_given: bool,
    noise: MeshNoise,
    chip: ChipErrors | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> tuple[tuple, int]:
    """The arguments of the compiled builder (`mesh_kernel.build_meshes`, after its output) for a stack, with the
    random draws of `_prepare_stack`, and ``b``: realisations per mesh (n_draws, or 1 when nothing differs between
    draws). Also what the MZI backend's fused block builder (`block_kernel.build_blocks`) takes."""
    from uhnas.hardware.mzi.mesh_kernel import noise_rotations  # compiled on first use (Numba)

    n, meshes = stack.n, len(stack)
    lay = mesh_layout(n)
    rdtype = torch.float32 if dtype == torch.complex64 else torch.float64
    np_dtype = np.float32 if rdtype == torch.float32 else np.float64
    if chip is None:
        ratio, amp, dummy_amp, cm, cb = _sampled_chip_values(
            n, meshes, n_draws, draws_given, noise, generator, np_dtype
        )
    else:
        ratio, amp, dummy_amp, cm, cb = _given_chip_values(stack, n_draws, noise, chip, rdtype)
    noisy = noise.phase_std > 0
    seeds = seed_of(generator, meshes) if noisy else np.zeros(meshes, dtype=np.uint64)
    rot = noise_rotations(float(noise.phase_std), np_dtype) if noisy else np.zeros((1, 2), np_dtype)
    per_mesh = n_draws if noisy or cb > 1 else 1
    column_start, dummy_start = _column_bounds(n)
    args = (
        column_start,
        lay.top,
        dummy_start,
        lay.dummy_mode,
        *_nominal_rotations(stack, noise, np_dtype),
        seeds,
        bool(noisy),
        rot,
        ratio,
        amp,
        dummy_amp,
        int(cm),
        int(cb),
    )
    return args, per_mesh


def _given_chip_values(
    stack: MeshStack, n_draws: int, noise: MeshNoise, chip: ChipErrors, rdtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """A given chip set as the compiled builder takes it: coupling ratios (chips, K, 2), MZI and dummy field
    amplitudes (chips, K), (chips, n_dummy) (n_dummy = 0: lossless), and its (mesh, draw) extents."""
    chip, cm, cb, has_coupler_error, lossy = _stack_chips(stack, n_draws, True, noise, chip, None)
    chips, k_total = cm * cb, chip.coupler_ratio.shape[1]
    ratio = chip.coupler_ratio.to(rdtype).contiguous()
    if not has_coupler_error:
        ratio = torch.full((chips, k_total, 2), NOMINAL_SPLIT, dtype=rdtype)
    amp = chip.mzi_loss_db.to(rdtype).mul(_DB_TO_AMP).exp_() if lossy else torch.ones((chips, k_total), dtype=rdtype)
    dummy_amp = chip.dummy_loss_db.to(rdtype).mul(_DB_TO_AMP).exp_() if lossy else torch.ones((chips, 0), dtype=rdtype)
    return ratio.numpy(), amp.contiguous().numpy(), dummy_amp.contiguous().numpy(), cm, cb


def _sampled_chip_values(
    n: int,
    meshes: int,
    n_draws: int,
    draws_given: bool,
    noise: MeshNoise,
    generator: torch.Generator | None,
    dtype: type,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """`_given_chip_values` of the chips `_stack_chips` would sample, from the same samples of the same streams,
    without the intermediate ChipErrors: each value is a table of the error model over the discretised normal's
    2^16 values (`sampled_coupler_ratios`, `_loss_amplitudes`), looked up at its sample's index (`fill_normals`),
    instead of three to five torch passes and an exponential per value."""
    lay = mesh_layout(n)
    k_total, n_dummy = len(lay.column), len(lay.dummy_column)
    chips = _sampled_chips(meshes, n_draws, draws_given, noise)
    cm, cb = (1, 1) if chips == 1 else (meshes, n_draws)
    ratio = np.full((chips, k_total, 2), NOMINAL_SPLIT, dtype=dtype)
    if noise.coupler_error_std > 0:  # sample_chip's order: coupler normals, then loss normals
        fill_normals(
            seed_of(generator, 1)[0],
            np.int64(0),
            sampled_coupler_ratios(noise.coupler_error_std, dtype),
            ratio.reshape(-1),
        )
    lossy = noise.loss_db_per_mzi > 0 or noise.loss_db_std > 0
    if noise.loss_db_std > 0:
        values = np.empty((chips, k_total + n_dummy), dtype=dtype)
        fill_normals(
            seed_of(generator, 1)[0],
            np.int64(0),
            _loss_amplitudes(noise.loss_db_per_mzi, noise.loss_db_std, dtype),
            values.reshape(-1),
        )
        amp, dummy_amp = np.ascontiguousarray(values[:, :k_total]), np.ascontiguousarray(values[:, k_total:])
    elif lossy:
        nominal = math.exp(_DB_TO_AMP * noise.loss_db_per_mzi)
        amp, dummy_amp = np.full((chips, k_total), nominal, dtype), np.full((chips, n_dummy), nominal, dtype)
    else:
        amp, dummy_amp = np.ones((chips, k_total), dtype), np.ones((chips, 0), dtype)
    return ratio, amp, dummy_amp, cm, cb


@lru_cache(maxsize=8)
def sampled_coupler_ratios(std: float, dtype: type) -> np.ndarray:
    """(2^16,) coupling ratio clamp(1/2 + std z, 0, 1) per value z of the float32 discretised normal, in float32
    arithmetic as `sample_chip` (and the attenuators' `noise.sample_attenuators`) compute it."""
    z = quantile_table(torch.float32).numpy()
    return np.clip(z * np.float32(std) + np.float32(NOMINAL_SPLIT), 0.0, 1.0).astype(np.float32).astype(dtype)


@lru_cache(maxsize=8)
def sampled_losses(mean_db: float, std_db: float) -> np.ndarray:
    """(2^16,) insertion loss IL = max(IL_0 + std z, 0) dB per value z of the float32 discretised normal, in float32
    arithmetic as `sample_chip` (and the attenuators' `noise.sample_attenuators`) compute it."""
    z = quantile_table(torch.float32).numpy()
    return np.maximum(z * np.float32(std_db) + np.float32(mean_db), np.float32(0.0)).astype(np.float32)


@lru_cache(maxsize=8)
def _loss_amplitudes(mean_db: float, std_db: float, dtype: type) -> np.ndarray:
    """(2^16,) field amplitude exp(-IL ln10 / 20) of each of `sampled_losses`."""
    return np.exp(sampled_losses(mean_db, std_db).astype(dtype) * dtype(_DB_TO_AMP)).astype(dtype)


def _compiled_matrices(
    stack: MeshStack,
    n_draws: int,
    draws_given: bool,
    noise: MeshNoise,
    chip: ChipErrors | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> Tensor:
    """(M, b, n, n) on the CPU from the compiled builder (`mesh_kernel`): the model and the random draws of
    `_prepare_stack` and the torch builders. ``b``: n_draws, or 1 when nothing differs between draws."""
    from uhnas.hardware.mzi.mesh_kernel import build_meshes  # compiled on first use (Numba)

    args, per_mesh = compiled_inputs(stack, n_draws, draws_given, noise, chip, generator, dtype)
    out = torch.empty((len(stack), per_mesh, stack.n, stack.n), dtype=dtype)
    build_meshes(out.numpy(), *args)
    return out


def mesh_matrices(
    phases: MeshStack | Sequence[MeshPhases],
    *,
    draws: int | None = None,
    noise: MeshNoise | None = None,
    chip: ChipErrors | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The matrices ``M`` meshes of the same size realise, in one batched computation: (M, n, n) or (M, draws, n, n).

    The many-mesh form of :func:`mesh_matrix` (same model, same conventions): ``phases`` is a :class:`MeshStack`
    (reuse it across calls: it caches the programmed phases) or a sequence of :class:`MeshPhases`.  Phase errors are
    resampled per mesh and draw.  Fabrication errors come from ``chip``: 1 chip (its errors shared by every mesh),
    M chips (one per mesh, shared by its draws) or M x draws chips (mesh-major: chip ``m * draws + d`` is draw ``d``
    of mesh ``m``); without ``chip``, one chip per mesh and draw is sampled if ``noise`` has chip errors.

    Generator order (all on the CPU): first every chip, as one ``sample_chip(n, noise, generator,
    draws=M * draws)`` call (mesh-major); then one phase-noise stream seed per mesh, in mesh order, each as the
    per-mesh call of :func:`mesh_matrix` draws it.  Hence ``mesh_matrices(meshes, generator=g)[m]`` equals
    ``mesh_matrix(meshes[m], chip=<chips of mesh m>, generator=g)`` called mesh after mesh on a generator that has
    drawn the chips first; for one mesh both functions consume the generator identically.
    """
    stack = phases if isinstance(phases, MeshStack) else MeshStack.of(phases)
    noise = noise or MeshNoise()
    n_draws = 1 if draws is None else int(draws)
    if n_draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    dev = torch.device(device) if device is not None else stack.theta.device
    n, meshes = stack.n, len(stack)
    if dev.type == "cpu" and _COMPILED_ON_CPU:
        m = _compiled_matrices(stack, n_draws, draws is not None, noise, chip, generator, dtype)
        per_mesh = m.shape[1]
    else:
        table, screen, plan, per_mesh = _prepare_stack(
            stack, n_draws, draws is not None, noise, chip, generator, dtype, dev
        )
        if plan.tile is None:
            m = _build_columns(table, plan, screen)[:n, :n].permute(2, 0, 1)
        else:
            m = _build_tiles(table, plan, screen)[:, :n, :n]
        m = m.reshape(meshes, per_mesh, n, n)
    if draws is None:
        return m[:, 0].contiguous()
    if per_mesh == 1 and n_draws > 1:
        return m.expand(meshes, n_draws, n, n).contiguous()
    return m.contiguous()


def mesh_matrix(
    phases: MeshPhases,
    *,
    draws: int | None = None,
    noise: MeshNoise | None = None,
    chip: ChipErrors | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The matrix the mesh realises: (n, n), or (draws, n, n) Monte-Carlo draws of the non-idealities.

    Phase errors are resampled per draw; fabrication errors come from ``chip`` (one chip shared by all draws, or
    one chip per draw).  Without ``chip``, chip errors (if ``noise`` has any) are sampled from ``generator``: one
    chip per draw.  All randomness is drawn on the CPU from ``generator`` (chips, then one seed for the mesh's
    counter-based phase-noise stream, `uhnas.hardware.counter_rng`), so a seed gives identical results on every
    device and builder.
    For many meshes of one size, :func:`mesh_matrices` computes the same in one batched call.
    """
    n_draws = 1 if draws is None else int(draws)
    if chip is not None and chip.chips not in (1, n_draws):
        raise ValueError(f"chip has n={chip.n}, chips={chip.chips}; expected n={phases.n} and 1 or {n_draws} chips")
    return mesh_matrices(
        MeshStack.of([phases]), draws=draws, noise=noise, chip=chip, generator=generator, dtype=dtype, device=device
    )[0]
