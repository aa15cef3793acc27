"""Tests for the Clements MZI mesh: exact decomposition, layout, and the noisy batched simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uhnas.hardware.mzi import mesh as mz
from uhnas.hardware.mzi.mesh import (
    ChipErrors,
    MeshNoise,
    MeshPhases,
    MeshStack,
    clements_decompose,
    clements_decompose_many,
    mesh_layout,
    mesh_matrices,
    mesh_matrix,
    sample_chip,
)

C128 = torch.complex128
# every non-ideality on, at magnitudes large enough that a wrong sample order or builder shows
FULL_NOISE = MeshNoise(
    phase_std=0.05, phase_bits=6, crosstalk=0.01, loss_db_per_mzi=0.3, loss_db_std=0.1, coupler_error_std=0.03
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensor ops: one thread avoids OpenMP stalls on a shared, loaded machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def haar(n: int, seed: int) -> np.ndarray:
    """Haar-random unitary: QR of a complex Gaussian with the phases of R's diagonal divided out (Mezzadri 2007)."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diag(r)
    return q * (d / np.abs(d))


def random_phases(n: int, seed: int) -> MeshPhases:
    g = torch.Generator().manual_seed(seed)
    k = n * (n - 1) // 2
    return MeshPhases(
        n,
        torch.rand(k, generator=g) * math.pi,
        torch.rand(k, generator=g) * 2 * math.pi,
        torch.rand(n, generator=g) * 2 * math.pi,
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unitarity_error(m: torch.Tensor) -> float:
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    return float((m @ m.conj().transpose(-1, -2) - eye).abs().max())


def mean_deviation(m: torch.Tensor, ideal: torch.Tensor) -> float:
    return float((m - ideal).abs().pow(2).sum((-1, -2)).sqrt().mean())


# ------------------------------------------------------------------------------------------- decomposition
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 17, 64, 128])
def test_exact_reconstruction_haar(n: int) -> None:
    u = haar(n, seed=n)
    phases = clements_decompose(u)
    m = mesh_matrix(phases, dtype=C128).numpy()
    assert np.abs(m - u).max() < 1e-10


def test_decompose_accepts_torch_and_scipy_haar() -> None:
    from scipy.stats import unitary_group

    u = unitary_group.rvs(12, random_state=3)
    phases = clements_decompose(torch.from_numpy(u))
    assert (mesh_matrix(phases, dtype=C128) - torch.from_numpy(u)).abs().max() < 1e-10


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_decompose_many_equals_one_by_one(n: int) -> None:
    us = np.stack([haar(n, seed=100 * n + s) for s in range(5)])
    stack = clements_decompose_many(torch.from_numpy(us))
    assert isinstance(stack, MeshStack) and len(stack) == 5
    for i, u in enumerate(us):
        one = clements_decompose(u)
        for a, b in ((stack.theta[i], one.theta), (stack.phi[i], one.phi), (stack.output_phase[i], one.output_phase)):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)  # (n = 1: no MZIs)
    assert (mesh_matrices(stack, dtype=C128) - torch.from_numpy(us)).abs().max() < 1e-10
    with pytest.raises(ValueError):
        clements_decompose_many(np.ones((2, 3, 3)))
    with pytest.raises(ValueError):
        clements_decompose_many(us[0])


def test_decompose_rejects_non_unitary_and_non_square() -> None:
    with pytest.raises(ValueError):
        clements_decompose(np.ones((3, 3)))
    with pytest.raises(ValueError):
        clements_decompose(np.ones((2, 3)))


def test_phase_ranges() -> None:
    p = clements_decompose(haar(16, seed=1))
    assert float(p.theta.min()) >= 0 and float(p.theta.max()) <= math.pi
    for x in (p.phi, p.output_phase):
        assert float(x.min()) >= 0 and float(x.max()) < 2 * math.pi
    assert p.theta.dtype == p.phi.dtype == p.output_phase.dtype == torch.float64


# ------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 33])
def test_mzi_count_depth_and_positions(n: int) -> None:
    p = clements_decompose(haar(n, seed=n))
    assert p.n_mzi == n * (n - 1) // 2
    assert p.depth == (n if n >= 3 else n - 1)
    col, top = p.column.numpy(), p.top.numpy()
    assert len(set(zip(col.tolist(), top.tolist(), strict=True))) == p.n_mzi  # distinct positions
    if p.n_mzi:
        assert np.all(top % 2 == col % 2) and top.max() <= n - 2 and col.max() == p.depth - 1
        assert np.all(np.diff(col) >= 0)  # numbered column by column
    # every column of a deep mesh is full: floor(n/2) or floor((n-1)/2) MZIs
    for c in range(p.depth):
        assert (col == c).sum() == len(range(c % 2, n - 1, 2))


def test_layout_neighbours_and_dummies() -> None:
    lay = mesh_layout(6)
    k = len(lay.column)
    for i in range(k):
        for nb, dm in ((lay.up[i], -2), (lay.down[i], 2)):
            if nb < k:
                assert lay.column[nb] == lay.column[i] and lay.top[nb] == lay.top[i] + dm
    # even n: the odd columns leave modes 0 and n-1 idle
    assert sorted(zip(lay.dummy_column.tolist(), lay.dummy_mode.tolist())) == [
        (c, m) for c in (1, 3, 5) for m in (0, 5)
    ]


# ------------------------------------------------------------------------------------------- fast path
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 12, 13, 33])
def test_reference_builder_is_the_column_product(n: int) -> None:
    """mesh_matrix's reference path is the column-by-column product of the gate table, and equals the ideal
    unitary when every error is off."""
    p = random_phases(n, seed=n)
    cpu = torch.device("cpu")
    table, screen, plan, _ = mz._prepare_stack(MeshStack.of([p]), 3, True, FULL_NOISE, None, gen(1), C128, cpu)
    ref = mz._build_reference(table, plan, screen)[:, :n, :n]
    got = mesh_matrix(p, draws=3, noise=FULL_NOISE, generator=gen(1), dtype=C128, builder="reference")
    assert (got - ref).abs().max() < 1e-13
    ideal = mesh_matrix(p, dtype=C128, builder="reference")
    assert (ideal - mesh_matrix(p, dtype=C128, builder="compiled")).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------- many meshes at once
@pytest.mark.parametrize("n", [5, 8, 13])  # column builder (odd and even n) and tiled builder
def test_batched_meshes_equal_per_mesh_calls_on_the_same_stream(n: int) -> None:
    """mesh_matrices draws every chip first (one sample_chip call for meshes x draws chips, mesh-major), then each
    mesh's phase errors in mesh order exactly as mesh_matrix draws them: so per-mesh mesh_matrix calls on a
    generator that drew the chips first, each given its own chips, realise the same matrices."""
    meshes, draws = 4, 3
    phases = [random_phases(n, seed=10 * n + i) for i in range(meshes)]
    batched = mesh_matrices(phases, draws=draws, noise=FULL_NOISE, generator=gen(7), dtype=C128)
    assert batched.shape == (meshes, draws, n, n)
    g = gen(7)
    chips = sample_chip(n, FULL_NOISE, g, draws=meshes * draws)
    for m, p in enumerate(phases):
        own = slice(m * draws, (m + 1) * draws)
        chip = ChipErrors(n, chips.coupler_ratio[own], chips.mzi_loss_db[own], chips.dummy_loss_db[own])
        single = mesh_matrix(p, draws=draws, noise=FULL_NOISE, chip=chip, generator=g, dtype=C128)
        assert (batched[m] - single).abs().max() < 1e-12
    assert float((batched[0, 0] - batched[0, 1]).abs().max()) > 1e-3  # draws differ ...
    assert float((batched[0, 0] - batched[1, 0]).abs().max()) > 1e-3  # ... and meshes
    # a reused stack (cached programmed phases) and complex64 give the same samples
    stack = MeshStack.of(phases)
    first = mesh_matrices(stack, draws=draws, noise=FULL_NOISE, generator=gen(7))
    again = mesh_matrices(stack, draws=draws, noise=FULL_NOISE, generator=gen(7))
    assert first.dtype == torch.complex64 and torch.equal(first, again)
    assert (first.to(C128) - batched).abs().max() < 1e-5


def test_batched_meshes_share_chips_as_asked_and_validate() -> None:
    n, meshes = 8, 3
    phases = [random_phases(n, seed=20 + i) for i in range(meshes)]
    ideal = mesh_matrices(phases, dtype=C128)
    assert ideal.shape == (meshes, n, n)
    for m, p in enumerate(phases):
        assert (ideal[m] - mesh_matrix(p, dtype=C128)).abs().max() < 1e-13
    noise = MeshNoise(loss_db_per_mzi=0.2, loss_db_std=0.05, coupler_error_std=0.02)
    per_mesh = sample_chip(n, noise, gen(1), draws=meshes)  # one chip per mesh, shared by its draws
    shared = mesh_matrices(phases, draws=4, noise=noise, chip=per_mesh, dtype=C128)
    assert shared.shape == (meshes, 4, n, n) and (shared - shared[:, :1]).abs().max() < 1e-14
    for m, p in enumerate(phases):
        one = ChipErrors(
            n, per_mesh.coupler_ratio[m : m + 1], per_mesh.mzi_loss_db[m : m + 1], per_mesh.dummy_loss_db[m : m + 1]
        )
        assert (shared[m, 0] - mesh_matrix(p, noise=noise, chip=one, dtype=C128)).abs().max() < 1e-13
    fresh = mesh_matrices(phases, draws=4, noise=noise, generator=gen(2), dtype=C128)  # one chip per mesh and draw
    assert float((fresh[:, 0] - fresh[:, 1]).abs().max()) > 1e-3
    with pytest.raises(ValueError):
        mesh_matrices(phases, draws=4, chip=sample_chip(n, noise, gen(1), draws=5))
    with pytest.raises(ValueError):
        MeshStack.of([random_phases(8, 0), random_phases(9, 0)])
    with pytest.raises(ValueError):
        mesh_matrices([])


# ------------------------------------------------------------------------------------------- noise model
def test_noise_free_draws_equal_ideal() -> None:
    p = clements_decompose(haar(20, seed=2))
    ideal = mesh_matrix(p, dtype=C128)
    assert ideal.shape == (20, 20)
    for noise in (None, MeshNoise()):
        draws = mesh_matrix(p, draws=4, noise=noise, generator=gen(0), dtype=C128)
        assert draws.shape == (4, 20, 20)
        assert (draws - ideal).abs().max() < 1e-13


@pytest.mark.parametrize("kind", ["phase_std", "coupler_error_std"])
def test_phase_and_coupler_errors_stay_unitary_and_grow(kind: str) -> None:
    p = random_phases(24, seed=4)
    ideal = mesh_matrix(p, dtype=C128)
    devs = []
    for sigma in (0.005, 0.02, 0.08):
        m = mesh_matrix(p, draws=16, noise=MeshNoise(**{kind: sigma}), generator=gen(5), dtype=C128)
        assert unitarity_error(m) < 1e-12
        devs.append(mean_deviation(m, ideal))
    assert 0 < devs[0] < devs[1] < devs[2]


def test_uniform_loss_is_a_global_scalar() -> None:
    n, il = 16, 0.25
    p = random_phases(n, seed=6)
    ideal = mesh_matrix(p, dtype=C128)
    m = mesh_matrix(p, noise=MeshNoise(loss_db_per_mzi=il), dtype=C128)
    assert (m - 10 ** (-n * il / 20) * ideal).abs().max() < 1e-12


def test_loss_is_sub_unitary_and_variation_path_dependent() -> None:
    n = 16
    p = random_phases(n, seed=7)
    m = mesh_matrix(p, draws=8, noise=MeshNoise(loss_db_per_mzi=0.2, loss_db_std=0.1), generator=gen(8), dtype=C128)
    sv = torch.linalg.svdvals(m)
    assert float(sv.max()) <= 1 + 1e-12
    # path-dependent: the singular values of one draw are no longer all equal
    assert float((sv.max(-1).values - sv.min(-1).values).min()) > 1e-3
    uniform = torch.linalg.svdvals(mesh_matrix(p, noise=MeshNoise(loss_db_per_mzi=0.2), dtype=C128))
    assert float(uniform.max() - uniform.min()) < 1e-12


def test_quantisation_error_shrinks_with_bits() -> None:
    p = random_phases(24, seed=9)
    ideal = mesh_matrix(p, dtype=C128)
    errs = [mean_deviation(mesh_matrix(p, noise=MeshNoise(phase_bits=b), dtype=C128), ideal) for b in (3, 5, 8, 12)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)) and errs[-1] < 1e-2
    assert unitarity_error(mesh_matrix(p, noise=MeshNoise(phase_bits=4), dtype=C128)) < 1e-12


def test_quantised_phases_lie_on_the_grid() -> None:
    p = random_phases(6, seed=10)
    theta, phi, out = mz._programmed(p, MeshNoise(phase_bits=3))
    step = 2 * math.pi / 8
    for x in (theta, phi, out):
        assert torch.allclose(x / step, torch.round(x / step), atol=1e-9)


def test_crosstalk_changes_the_matrix_and_uses_column_neighbours() -> None:
    p = random_phases(12, seed=11)
    base = mesh_matrix(p, noise=MeshNoise(crosstalk=0.0), dtype=C128)
    xt = mesh_matrix(p, noise=MeshNoise(crosstalk=0.02), dtype=C128)
    assert float((xt - base).abs().max()) > 1e-4
    assert unitarity_error(xt) < 1e-12  # crosstalk only shifts phases
    lay = mesh_layout(12)
    theta, phi, out = mz._with_crosstalk(p.theta, p.phi, p.output_phase, 0.1, lay)
    k = 7  # an interior MZI of column 0 has both neighbours
    assert lay.up[k] < len(lay.column) and lay.down[k] < len(lay.column)
    expected = p.theta[k] + 0.1 * (p.theta[lay.up[k]] + p.theta[lay.down[k]])
    assert torch.isclose(theta[k], expected)
    assert torch.isclose(out[0], p.output_phase[0] + 0.1 * p.output_phase[1])


def test_determinism_for_a_seed() -> None:
    p = random_phases(16, seed=12)
    noise = MeshNoise(
        phase_std=0.02, phase_bits=8, crosstalk=0.005, loss_db_per_mzi=0.2, loss_db_std=0.05, coupler_error_std=0.01
    )
    a = mesh_matrix(p, draws=5, noise=noise, generator=gen(42))
    b = mesh_matrix(p, draws=5, noise=noise, generator=gen(42))
    c = mesh_matrix(p, draws=5, noise=noise, generator=gen(43))
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-4
    assert float((a[0] - a[1]).abs().max()) > 1e-4  # draws differ from each other


def test_one_chip_is_fixed_across_draws() -> None:
    n = 16
    p = random_phases(n, seed=13)
    noise = MeshNoise(loss_db_per_mzi=0.2, loss_db_std=0.05, coupler_error_std=0.02)
    chip = sample_chip(n, noise, gen(1))
    assert isinstance(chip, ChipErrors) and chip.chips == 1
    m = mesh_matrix(p, draws=4, noise=noise, chip=chip, generator=gen(2), dtype=C128)
    assert (m - m[0]).abs().max() < 1e-14  # no per-draw noise: every draw is the same chip
    assert float((m[0] - mesh_matrix(p, dtype=C128)).abs().max()) > 1e-3  # ... which is not ideal
    chips = sample_chip(n, noise, gen(1), draws=4)
    assert chips.chips == 4 and chips.coupler_ratio.shape == (4, p.n_mzi, 2)
    many = mesh_matrix(p, draws=4, noise=noise, chip=chips, dtype=C128)
    assert float((many[1] - many[0]).abs().max()) > 1e-3  # one chip per draw
    for d in range(4):  # draw d realises chip d
        one = ChipErrors(
            n, chips.coupler_ratio[d : d + 1], chips.mzi_loss_db[d : d + 1], chips.dummy_loss_db[d : d + 1]
        )
        assert (mesh_matrix(p, noise=noise, chip=one, dtype=C128) - many[d]).abs().max() < 1e-13
    # phase noise on top of a fixed chip: draws differ, chip part identical
    noisy = mesh_matrix(p, draws=3, noise=MeshNoise(phase_std=0.02, loss_db_per_mzi=0.2), chip=chip, generator=gen(3))
    assert float((noisy[0] - noisy[1]).abs().max()) > 1e-4


def test_chip_sampling_statistics_and_validation() -> None:
    noise = MeshNoise(loss_db_per_mzi=0.2, loss_db_std=0.05, coupler_error_std=0.01)
    chips = sample_chip(32, noise, gen(0), draws=64)
    assert abs(float(chips.coupler_ratio.mean()) - 0.5) < 1e-3
    assert abs(float(chips.coupler_ratio.std()) - 0.01) < 1e-3
    assert abs(float(chips.mzi_loss_db.std()) - 0.05) < 5e-3
    assert chips.dummy_loss_db.shape == (64, len(mesh_layout(32).dummy_column))
    ideal_chip = sample_chip(32, MeshNoise())
    assert torch.all(ideal_chip.coupler_ratio == 0.5) and torch.all(ideal_chip.mzi_loss_db == 0)
    p = random_phases(32, seed=1)
    with pytest.raises(ValueError):
        mesh_matrix(p, draws=3, chip=chips)  # 64 chips for 3 draws
    with pytest.raises(ValueError):
        MeshNoise(phase_std=-1.0)
    with pytest.raises(ValueError):
        MeshNoise(phase_bits=0)
