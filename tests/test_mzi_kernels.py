"""The compiled CPU kernels against the torch code they replace on a CPU, and the counter-based normal stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uhnas.hardware import counter_rng
from uhnas.hardware.mzi import mesh as mz
from uhnas.hardware.mzi.mesh import MeshNoise, MeshPhases, MeshStack, mesh_matrices, sample_chip
from uhnas.hardware.sampling import quantile_table

FULL_NOISE = MeshNoise(
    phase_std=0.05, phase_bits=6, crosstalk=0.01, loss_db_per_mzi=0.3, loss_db_std=0.1, coupler_error_std=0.03
)


def random_stack(n: int, meshes: int, seed: int) -> MeshStack:
    g = torch.Generator().manual_seed(seed)
    k = n * (n - 1) // 2
    return MeshStack.of(
        [
            MeshPhases(
                n,
                torch.rand(k, generator=g) * math.pi,
                torch.rand(k, generator=g) * 2 * math.pi,
                torch.rand(n, generator=g) * 2 * math.pi,
            )
            for _ in range(meshes)
        ]
    )


def both_builders(monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """mesh_matrices from the compiled builder and from the torch reference builder, same arguments; a ``seed``
    argument becomes a fresh generator for each."""
    seed = kwargs.pop("seed", None)
    results = []
    for builder in ("compiled", "reference"):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        results.append(mesh_matrices(generator=generator, builder=builder, **kwargs))
    return results[0], results[1]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 12, 13, 17, 33, 64])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_compiled_builder_equals_torch_builders_with_every_error_on(monkeypatch, n: int, dtype) -> None:
    """Same generator, same model, same random draws: the builders agree to the dtype's rounding."""
    stack = random_stack(n, meshes=3, seed=n)
    fast, ref = both_builders(monkeypatch, phases=stack, draws=5, noise=FULL_NOISE, seed=4, dtype=dtype)
    assert fast.shape == ref.shape == (3, 5, n, n) and fast.dtype == ref.dtype == dtype
    tol = 2e-5 if dtype == torch.complex64 else 1e-11
    assert float((fast - ref).abs().max()) < tol
    if n >= 2:  # the noise is really there: draws and meshes differ
        assert float((fast[0, 0] - fast[0, 1]).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "noise",
    [
        MeshNoise(phase_std=0.05),
        MeshNoise(coupler_error_std=0.03),
        MeshNoise(loss_db_per_mzi=0.3, loss_db_std=0.1),
        MeshNoise(phase_bits=5, crosstalk=0.02),
        MeshNoise(),
    ],
    ids=["phase", "couplers", "loss", "systematic", "ideal"],
)
def test_compiled_builder_equals_torch_builders_per_error(monkeypatch, noise: MeshNoise) -> None:
    stack = random_stack(16, meshes=2, seed=3)
    fast, ref = both_builders(monkeypatch, phases=stack, draws=4, noise=noise, seed=9, dtype=torch.complex128)
    assert float((fast - ref).abs().max()) < 1e-11


@pytest.mark.parametrize("chips", ["one", "per_mesh", "per_mesh_and_draw"])
def test_compiled_builder_uses_given_chips_like_the_torch_builders(monkeypatch, chips: str) -> None:
    n, meshes, draws = 9, 3, 4
    stack = random_stack(n, meshes, seed=1)
    count = {"one": 1, "per_mesh": meshes, "per_mesh_and_draw": meshes * draws}[chips]
    chip = sample_chip(n, FULL_NOISE, torch.Generator().manual_seed(2), draws=count)
    noise = MeshNoise(loss_db_per_mzi=0.3)  # the chip's own errors, no phase noise
    fast, ref = both_builders(monkeypatch, phases=stack, draws=draws, noise=noise, chip=chip, dtype=torch.complex128)
    assert float((fast - ref).abs().max()) < 1e-11
    shared_by_draws = float((fast[:, 0] - fast[:, 1]).abs().max()) < 1e-14
    assert shared_by_draws == (chips != "per_mesh_and_draw")
    shared_by_meshes = float((fast[0] - fast[1]).abs().max()) < 1e-14
    assert not shared_by_meshes  # different phases


def test_compiled_builder_is_unitary_without_loss_and_exact_without_noise() -> None:
    stack = random_stack(24, meshes=2, seed=5)
    ideal = mesh_matrices(stack, dtype=torch.complex128)
    eye = torch.eye(24, dtype=torch.complex128)
    assert float((ideal @ ideal.conj().transpose(-1, -2) - eye).abs().max()) < 1e-12
    noisy = mesh_matrices(
        stack,
        draws=6,
        noise=MeshNoise(phase_std=0.05, coupler_error_std=0.03),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.complex128,
    )
    assert float((noisy @ noisy.conj().transpose(-1, -2) - eye).abs().max()) < 1e-12
    assert float((noisy - ideal[:, None]).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------- counter stream
def test_counter_normals_are_a_function_of_seed_and_position() -> None:
    whole = counter_rng.counter_normals(7, 1001)
    assert torch.equal(counter_rng.counter_normals(7, 1001), whole)
    assert torch.equal(counter_rng.counter_normals(7, 500, start=400), whole[400:900])
    assert not torch.equal(counter_rng.counter_normals(8, 1001), whole)
    assert set(whole.tolist()) <= set(quantile_table().tolist())  # values of the discretised normal
    with pytest.raises(ValueError):
        counter_rng.counter_normals(7, 10, start=3)


def test_counter_normals_have_the_moments_of_a_standard_normal() -> None:
    z = counter_rng.counter_normals(12345, 1 << 20, dtype=torch.float64).numpy()
    se = 1.0 / math.sqrt(z.size)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2) * se
    assert abs(np.mean(z**4) - 3.0) < 5 * math.sqrt(96) * se  # kurtosis 3 (var of z^4 is 96)
    # neighbours are uncorrelated (the four samples of one 64-bit word and across words)
    for lag in (1, 2, 3, 4, 5):
        assert abs(np.mean(z[:-lag] * z[lag:])) < 5 * se
    # KS distance to N(0, 1): the discretisation contributes at most 2^-16
    s = np.sort(z)
    cdf = 0.5 * (1.0 + torch.special.erf(torch.from_numpy(s) / math.sqrt(2.0)).numpy())
    ks = max(np.max(np.arange(1, s.size + 1) / s.size - cdf), np.max(cdf - np.arange(s.size) / s.size))
    assert ks < 1.63 / math.sqrt(s.size) + 2.0**-16  # 1 % critical value


def test_streams_of_different_seeds_are_uncorrelated() -> None:
    a = counter_rng.counter_normals(1, 1 << 16, dtype=torch.float64).numpy()
    b = counter_rng.counter_normals(2, 1 << 16, dtype=torch.float64).numpy()
    assert abs(np.mean(a * b)) < 5 / math.sqrt(a.size)


@pytest.mark.parametrize(("n", "meshes"), [(1, 1), (1, 4), (2, 3), (3, 1), (8, 20), (13, 3), (32, 2)])
def test_compiled_decomposition_equals_clements_decompose(n: int, meshes: int) -> None:
    from scipy.stats import unitary_group

    us = np.stack([np.atleast_2d(unitary_group.rvs(n, random_state=1000 * n + i)) for i in range(meshes)])
    stack = mz.clements_decompose_many(us)  # the compiled decomposition (`decompose_kernel`)
    assert isinstance(stack, MeshStack) and len(stack) == meshes and stack.n == n
    for i, u in enumerate(us):
        one = mz.clements_decompose(u)  # the reference, one matrix at a time
        for a, b in ((stack.theta[i], one.theta), (stack.phi[i], one.phi), (stack.output_phase[i], one.output_phase)):
            assert a.dtype == torch.float64 and a.shape == b.shape
            wrapped = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi  # equal up to 2 pi (n = 1: no MZIs)
            assert bool((wrapped.abs() < 1e-9).all())
    assert float((mesh_matrices(stack, dtype=torch.complex128) - torch.from_numpy(us)).abs().max()) < 1e-10
    bad = us.copy()
    bad[-1, 0, 0] *= 1.1
    with pytest.raises(ValueError, match="matrix is not unitary") as many:
        mz.clements_decompose_many(bad)
    with pytest.raises(ValueError) as single:
        mz.clements_decompose(bad[-1])
    assert str(many.value) == str(single.value)


# ------------------------------------------------------------------------------------------- mesh kernel layouts
def kernel_arguments(monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple:
    """The arguments mesh_matrices (compiled builder) passes to `mesh_kernel.build_meshes`."""
    from uhnas.hardware.mzi import mesh_kernel

    seen = []
    real = mesh_kernel.build_meshes

    def record(*args):
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(mesh_kernel, "build_meshes", record)
    mesh_matrices(builder="compiled", **kwargs)
    return seen[0]


@pytest.mark.parametrize("n", [2, 3, 4, 8, 13, 17, 33])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize(
    "case", ["every_error", "phase", "couplers", "loss", "systematic", "ideal", "one_chip", "chip_per_mesh"]
)
def test_mesh_kernel_layouts_agree(monkeypatch, n: int, dtype, case: str) -> None:
    """The small-mesh layout (realisations in the lanes, diagonal factors folded into the MZIs) and the large-mesh
    layout (matrix columns in the lanes) compute the same matrices; 21 realisations: one batch of 16 and a part."""
    from uhnas.hardware.mzi import mesh_kernel

    noise = {
        "phase": MeshNoise(phase_std=0.05),
        "couplers": MeshNoise(coupler_error_std=0.03),
        "loss": MeshNoise(loss_db_per_mzi=0.3, loss_db_std=0.1),
        "systematic": MeshNoise(phase_bits=5, crosstalk=0.02),
        "ideal": MeshNoise(),
    }.get(case, FULL_NOISE)
    meshes, draws = 3, 7
    chip = None
    if case in ("one_chip", "chip_per_mesh"):
        chip = sample_chip(n, FULL_NOISE, torch.Generator().manual_seed(2), draws=1 if case == "one_chip" else meshes)
    args = kernel_arguments(
        monkeypatch,
        phases=random_stack(n, meshes, seed=n),
        draws=draws,
        noise=noise,
        chip=chip,
        generator=torch.Generator().manual_seed(3),
        dtype=dtype,
    )
    lanes, columns = np.zeros_like(args[0]), np.zeros_like(args[0])
    mesh_kernel._build_lanes(lanes, *args[1:])
    mesh_kernel._build_columns(columns, *args[1:])
    tol = 2e-5 if dtype == torch.complex64 else 1e-11
    assert float(np.abs(lanes - columns).max()) < tol
    assert float(np.abs(columns).max()) > 0.1  # filled


def test_noise_rotation_half_table_holds_every_table_value() -> None:
    """e^{i sigma t} of every one of the 2^16 table values t from the antisymmetric half table."""
    from uhnas.hardware.mzi import mesh_kernel

    sigma = 0.3
    table = quantile_table(torch.float64).numpy()
    rot = mesh_kernel.noise_rotations(sigma, np.float64)
    assert rot.shape == (1 << 15, 2)
    got = np.array([mesh_kernel._rotation(rot, np.int64(u)) for u in range(1 << 16)])
    assert np.array_equal(got[:, 0], np.cos(sigma * table)) and np.array_equal(got[:, 1], np.sin(sigma * table))
