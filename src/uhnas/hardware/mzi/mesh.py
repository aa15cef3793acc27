"""Clements rectangular MZI mesh: exact decomposition and a fast, batched, noisy simulator.

A unitary ``U`` (n x n) is realised by a rectangular mesh of n(n-1)/2 Mach-Zehnder interferometers (MZIs) in
``n`` columns followed by one column of ``n`` output phase shifters (Clements et al., "Optimal design for universal
multiport interferometers", Optica 3, 1460 (2016)).  :func:`clements_decompose` computes the phases exactly;
:func:`mesh_matrix` rebuilds the matrix the mesh realises, optionally for a batch of Monte-Carlo draws of the
non-idealities collected in the project's hardware reference (hardware.md, "Coherent MZI mesh photonics"):

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

Two builders, chosen explicitly (``builder``)
---------------------------------------------
The **reference** (:func:`_build_reference`, torch ops on any device, differentiable) is the specification: the
programmed phases and every error sample become one 2x2 transfer per MZI (:func:`_gate_table`), applied column by
column to a batch of identity matrices, then the output phase screen.  The **compiled accelerator** (CPU only,
:mod:`uhnas.hardware.mzi.mesh_kernel`, Numba) computes the same product from the same samples: each MZI's 2x2
update applied only over the columns light has reached, its transfer made from cos/sin of the programmed phases
times a table of e^{i sigma z} (no sine per draw); small meshes (the backend's 8 x 8) 16 realisations at a time,
one per vector lane, large ones one realisation at a time in two cache-resident real planes.  ``auto`` picks the
accelerator on a CPU and the reference elsewhere; the tests check that the two agree to the dtype's rounding.

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
BUILDERS = ("auto", "compiled", "reference")
"""Mesh builders: ``compiled`` (Numba, CPU only: `mesh_kernel`), ``reference`` (torch ops, any device:
`_build_reference`), ``auto`` (compiled on a CPU, reference elsewhere). Both take the same random samples."""


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
# The mesh is simulated on a ring of ``ring`` modes (an odd mesh gets a virtual mode) over ``columns`` columns.
# Ring slot j of column q joins
# modes (2j + q%2, 2j + q%2 + 1 mod ring); a slot is an MZI or an idle position (diagonal: the two modes' dummy
# loss, or 1 for virtual modes / padding columns).  Idle positions are the only ones across the ring seam, so the
# ring never couples mode n-1 to mode 0.


def _sizes(n: int, depth: int) -> tuple[int, int]:
    """Ring size (an odd mesh gets a virtual mode) and column count of an n-mode mesh."""
    return n + n % 2, depth


@dataclass(frozen=True)
class _Plan:
    """How the gate table of an n-mode mesh is laid out and consumed (see _make_plan)."""

    ring: int
    columns: int
    row_mzi: Tensor  # (R,) MZI held by each gate-table row; K for rows that are not MZIs
    fixed_rows: Tensor  # (F,) rows that are not MZIs: idle positions and identities
    fixed_amp: Tensor  # (F, 2) their diagonal, as indices into [dummy amplitudes..., 1]
    slot_row: Tensor  # (columns, ring // 2) row holding the gate of each ring slot


@lru_cache(maxsize=64)
def _make_plan(n: int) -> _Plan:
    """Gate-table layout for an n-mode mesh: one row per ring slot, column by column (row q * ring/2 + j is slot j
    of column q)."""
    lay = mesh_layout(n)
    k_total, n_dummy = len(lay.column), len(lay.dummy_column)
    ring, columns = _sizes(n, lay.depth)
    half = ring // 2
    mzi = {(int(c), int(m)): k for k, (c, m) in enumerate(zip(lay.column, lay.top, strict=True))}
    dummy = {(int(c), int(m)): d for d, (c, m) in enumerate(zip(lay.dummy_column, lay.dummy_mode, strict=True))}
    rows: list[tuple[int, int] | None] = [(q, j) for q in range(columns) for j in range(half)]
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
        raise RuntimeError(f"inconsistent mesh plan for n={n}")  # guards the layout bookkeeping
    return _Plan(
        ring=ring,
        columns=columns,
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
) -> Tensor:
    """Every 2x2 transfer of the plan's gate table, as (2, 2, rows, *batch).

    MZI rows: amp . B(k2) . diag(e^{i theta}, 1) . B(k1) . diag(e^{i phi}, 1), i.e. with c_j = sqrt(1 - k_j),
    r_j = sqrt(k_j):  T00 = amp (c1 c2 e^{i(theta+phi)} - r1 r2 e^{i phi}),  T01 = i amp (r1 c2 e^{i theta} + c1 r2),
    T10 = i amp (c1 r2 e^{i(theta+phi)} + r1 c2 e^{i phi}),  T11 = amp (c1 c2 - r1 r2 e^{i theta}).
    theta, phi: (rows, *batch) in the real dtype of ``cdtype`` (any batch dims of size 1 broadcast); couplers:
    (c1 c2, r1 r2, r1 c2, c1 r2), each (rows, *batch), or None (ideal 50:50); amp: (rows, *batch) field amplitude
    or None (lossless).  Rows ``fixed_rows`` are diagonal with amplitudes ``fixed_diag`` (F, 2, *batch).
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
    torch.mul(cc, cb, out=re).addcmul_(rr, cp, value=-1.0)  # T00
    torch.mul(cc, sb, out=im).addcmul_(rr, sp, value=-1.0)
    torch.complex(re, im, out=table[0, 0])
    torch.mul(rc, st, out=re).neg_()  # T01
    torch.mul(rc, ct, out=im).add_(cr)
    torch.complex(re, im, out=table[0, 1])
    torch.mul(cr, sb, out=re).addcmul_(rc, sp).neg_()  # T10
    torch.mul(cr, cb, out=im).addcmul_(rc, cp)
    torch.complex(re, im, out=table[1, 0])
    torch.mul(rr, ct, out=re).neg_().add_(cc)  # T11
    torch.mul(rr, st, out=im)
    torch.complex(re, im.neg_(), out=table[1, 1])
    if fixed_rows.numel():
        fixed = table.new_zeros((2, 2, fixed_rows.shape[0], *batch))
        fixed[0, 0] = fixed_diag[:, 0]
        fixed[1, 1] = fixed_diag[:, 1]
        table.index_copy_(2, fixed_rows, fixed)
    return table


# --------------------------------------------------------------------------------------------------- builders
def _build_reference(table: Tensor, plan: _Plan, screen: Tensor) -> Tensor:
    """The reference mesh builder: accumulate the ring mesh column by column (one batched 2x2 update of every mode
    pair per column), then the output screen; (batch, ring, ring). Plain torch ops, differentiable, any device."""
    gates = table.permute(3, 2, 0, 1)[:, plan.slot_row.to(table.device)]  # (batch, columns, ring/2, 2, 2)
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
    table = _gate_table(theta, phi, couplers, amp, plan.fixed_rows.to(dev), fixed_diag, dtype).view(
        2, 2, rows, meshes * per_mesh
    )
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
    builder: str = "auto",
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

    ``builder`` (`BUILDERS`): the compiled accelerator or the torch reference; they agree to the dtype's rounding
    on the same samples (tests/test_mzi_kernels.py).
    """
    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {BUILDERS}, got {builder!r}")
    stack = phases if isinstance(phases, MeshStack) else MeshStack.of(phases)
    noise = noise or MeshNoise()
    n_draws = 1 if draws is None else int(draws)
    if n_draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    dev = torch.device(device) if device is not None else stack.theta.device
    n, meshes = stack.n, len(stack)
    if builder == "compiled" and dev.type != "cpu":
        raise ValueError(f"the compiled mesh builder runs on the CPU, not on {dev}")
    if builder == "compiled" or (builder == "auto" and dev.type == "cpu"):
        m = _compiled_matrices(stack, n_draws, draws is not None, noise, chip, generator, dtype)
        per_mesh = m.shape[1]
    else:
        table, screen, plan, per_mesh = _prepare_stack(
            stack, n_draws, draws is not None, noise, chip, generator, dtype, dev
        )
        m = _build_reference(table, plan, screen)[:, :n, :n].reshape(meshes, per_mesh, n, n)
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
    builder: str = "auto",
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
        MeshStack.of([phases]),
        draws=draws,
        noise=noise,
        chip=chip,
        generator=generator,
        dtype=dtype,
        device=device,
        builder=builder,
    )[0]
