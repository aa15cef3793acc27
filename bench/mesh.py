"""Benchmark: noisy Clements mesh matrices, batched over Monte-Carlo draws, on one CPU thread.

Prints ms per noisy n x n matrix (64 draws, every non-ideality on at "typical" magnitudes from the project's
hardware reference, hardware.md, "Non-idealities") for uhnas's mesh_matrix against, measured in the same run:
  (a) a plain reference written here: one MZI at a time, a 2x2 update per MZI batched over draws;
  (b) the practical floor: one batched complex matmul of the same shape (draws x n x n @ n x n).
Also the time of clements_decompose for n = 64.  Then many meshes of one size at once, as the MZI backend maps a
layer (M meshes x 32 draws): a loop of per-mesh mesh_matrix calls against one mesh_matrices call on a MeshStack,
and a loop of clements_decompose against one clements_decompose_many.  Medians of several repeats, in process CPU
time on a CPU (robust to other processes on a shared machine; wall time on CUDA).  The process keeps freed memory
in its heap, as the uhnas command does (uhnas.allocator); `faults/call` counts the page faults that remain.

uhnas's builder is the compiled CPU accelerator on a CPU and the torch reference builder elsewhere (``--builder``
picks one explicitly, e.g. ``--builder reference`` to time the reference model on a CPU).

    python bench/mesh.py [--device cuda] [--builder auto|compiled|reference] [--draws 64] [--sizes 8 16 32 64 128]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from uhnas.allocator import keep_freed_memory, page_faults
from uhnas.hardware.mzi.mesh import (
    ChipErrors,
    MeshNoise,
    MeshPhases,
    MeshStack,
    clements_decompose,
    clements_decompose_many,
    mesh_matrices,
    mesh_matrix,
    sample_chip,
)

# hardware.md "Non-idealities", typical column: sigma_phi 0.02 rad (ADEPT), 8-bit phases (L2ight), crosstalk 0.005
# (L2ight), 0.2 dB/MZI (0.1-0.3 dB range) with 0.05 dB spread, coupler ratio sigma 0.01 (ADEPT / Fang et al.)
BUILDER = "auto"  # uhnas's mesh builder (--builder)

TYPICAL = MeshNoise(
    phase_std=0.02, phase_bits=8, crosstalk=0.005, loss_db_per_mzi=0.2, loss_db_std=0.05, coupler_error_std=0.01
)


def haar(n: int, seed: int) -> np.ndarray:
    """Haar-random unitary (QR of a complex Gaussian, phases of R's diagonal divided out)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))
    d = np.diag(r)
    return q * (d / np.abs(d))


def reference_mesh(
    phases: MeshPhases, noise: MeshNoise, chip: ChipErrors, z: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """The straightforward simulator: effective phases, then one 2x2 update per MZI (batched over draws).

    Written independently of uhnas's builder from the documented model: MZI = loss . B(k2) . diag(e^{i theta}, 1) .
    B(k1) . diag(e^{i phi}, 1); idle edge modes cross a loss-matched dummy per column; output phase screen last.
    ``z``: (draws, 2K + n) standard normals for the phase errors (None: no phase errors).
    """
    n, k_total = phases.n, phases.n_mzi
    col, top = phases.column.tolist(), phases.top.tolist()
    where = {(c, m): k for k, (c, m) in enumerate(zip(col, top, strict=True))}
    progs = []
    for p in (phases.theta, phases.phi, phases.output_phase):
        p = torch.remainder(p, 2 * math.pi)
        if noise.phase_bits is not None:
            step = 2 * math.pi / 2**noise.phase_bits
            p = torch.remainder(torch.round(p / step) * step, 2 * math.pi)
        progs.append(p)
    theta, phi, out = (p.clone() for p in progs)
    g = noise.crosstalk
    for k, (c, m) in enumerate(zip(col, top, strict=True)):
        for nb in (where.get((c, m - 2)), where.get((c, m + 2))):
            if nb is not None:
                theta[k] += g * progs[0][nb]
                phi[k] += g * progs[1][nb]
    for j in range(n):
        for nb in (j - 1, j + 1):
            if 0 <= nb < n:
                out[j] += g * progs[2][nb]
    draws = chip.chips if z is None else z.shape[0]
    theta, phi, out = (x.expand(draws, -1).clone() for x in (theta, phi, out))
    if z is not None:
        theta += noise.phase_std * z[:, :k_total]
        phi += noise.phase_std * z[:, k_total : 2 * k_total]
        out += noise.phase_std * z[:, 2 * k_total :]
    kappa = chip.coupler_ratio.double().expand(draws, -1, -1)
    t, r = torch.sqrt(1 - kappa), torch.sqrt(kappa)
    coupler = torch.stack([torch.stack([t + 0j, 1j * r], -1), torch.stack([1j * r, t + 0j], -1)], -2)  # D,K,2,2,2
    zero = torch.zeros_like(theta)
    shifter = lambda x: torch.diag_embed(torch.stack([torch.exp(1j * x), torch.exp(1j * zero)], -1))  # noqa: E731
    amp = 10 ** (-chip.mzi_loss_db.double().expand(draws, -1) / 20)
    mzi = amp[..., None, None] * (coupler[:, :, 1] @ shifter(theta) @ coupler[:, :, 0] @ shifter(phi))
    mzi = mzi.to(device=device, dtype=torch.complex64)
    dummy = (10 ** (-chip.dummy_loss_db.double().expand(draws, -1) / 20)).to(device=device, dtype=torch.float32)
    dummy_at: dict[int, list[tuple[int, int]]] = {}
    lay_cols, lay_modes = _dummy_positions(n)
    for d, (c, m) in enumerate(zip(lay_cols, lay_modes, strict=True)):
        dummy_at.setdefault(c, []).append((d, m))
    mat = torch.eye(n, dtype=torch.complex64, device=device).expand(draws, n, n).clone()
    current = -1
    for k in range(k_total):
        if col[k] != current:
            current = col[k]
            for d, m in dummy_at.get(current, []):
                mat[:, m] *= dummy[:, d, None]
        m = top[k]
        mat[:, m : m + 2] = mzi[:, k] @ mat[:, m : m + 2]
    for c in range(current + 1, max(lay_cols, default=-1) + 1):
        for d, m in dummy_at.get(c, []):
            mat[:, m] *= dummy[:, d, None]
    return torch.exp(1j * out).to(device=device, dtype=torch.complex64)[:, :, None] * mat


def _dummy_positions(n: int) -> tuple[list[int], list[int]]:
    """(column, mode) of every idle edge position of the n-mode rectangular mesh, column by column."""
    depth = n if n >= 3 else n - 1
    cols, modes = [], []
    for c in range(depth):
        covered = {x for m in range(c % 2, n - 1, 2) for x in (m, m + 1)}
        for m in range(n):
            if m not in covered:
                cols.append(c)
                modes.append(m)
    return cols, modes


CLOCK: Callable[[], float] = time.process_time  # wall time (perf_counter) on CUDA, set in main()


def median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median time of ``fn`` in ms after one warm-up call (process CPU time on a CPU, wall time on CUDA)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        sync()
        times.append(CLOCK() - t0)
    return 1e3 * statistics.median(times)


def many_meshes(device: torch.device, sync: Callable[[], None], repeats: int) -> None:
    """Per-mesh loop vs one batched call for a layer's worth of meshes (M meshes of size n, 32 draws)."""
    draws = 32
    print(f"many meshes of one size, {draws} draws each (a backend layer: 2 meshes per K x K block)")
    print(
        f"{'n':>4} {'M':>5} {'loop ms':>9} {'batched ms':>11} {'speedup':>8} {'max|batched-loop|':>18} "
        f"{'decompose loop ms':>18} {'decompose many ms':>18} {'speedup':>8}"
    )
    for n, meshes in ((8, 160), (8, 36), (16, 40), (32, 10)):
        us = np.stack([haar(n, seed=1000 * n + i) for i in range(meshes)])
        phases = [clements_decompose(u) for u in us]
        stack = MeshStack.of(phases)
        gen = torch.Generator().manual_seed(0)
        loop = median_ms(
            lambda: [
                mesh_matrix(p, draws=draws, noise=TYPICAL, generator=gen, device=device, builder=BUILDER)
                for p in phases
            ],
            max(1, repeats // 3),
            sync,
        )
        batched = median_ms(
            lambda: mesh_matrices(stack, draws=draws, noise=TYPICAL, generator=gen, device=device, builder=BUILDER),
            repeats,
            sync,
        )
        # the same stream (mesh_matrices: all chips first, then each mesh's phase errors as mesh_matrix draws them)
        ours = mesh_matrices(
            stack,
            draws=draws,
            noise=TYPICAL,
            generator=torch.Generator().manual_seed(5),
            device=device,
            builder=BUILDER,
        )
        g = torch.Generator().manual_seed(5)
        chips = sample_chip(n, TYPICAL, g, draws=meshes * draws)
        err = 0.0
        for m, p in enumerate(phases):
            own = slice(m * draws, (m + 1) * draws)
            chip = ChipErrors(n, chips.coupler_ratio[own], chips.mzi_loss_db[own], chips.dummy_loss_db[own])
            one = mesh_matrix(p, draws=draws, noise=TYPICAL, chip=chip, generator=g, device=device, builder=BUILDER)
            err = max(err, float((ours[m] - one).abs().max()))
        dec_loop = median_ms(lambda: [clements_decompose(u) for u in us], max(1, repeats // 3), lambda: None)
        dec_many = median_ms(lambda: clements_decompose_many(us), repeats, lambda: None)
        print(
            f"{n:>4} {meshes:>5} {loop:>9.2f} {batched:>11.2f} {loop / batched:>7.1f}x {err:>18.1e} "
            f"{dec_loop:>18.2f} {dec_many:>18.2f} {dec_loop / dec_many:>7.1f}x"
        )


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--builder", default="auto", help="auto (default), compiled (CPU) or reference")
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    global BUILDER
    BUILDER = args.builder
    torch.set_num_threads(1)
    device = torch.device(args.device)
    tuned = keep_freed_memory()  # as the uhnas command and its workers do (uhnas.allocator)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    global CLOCK
    CLOCK = time.perf_counter if device.type == "cuda" else time.process_time
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"uhnas mesh benchmark: torch {torch.__version__}, {torch.get_num_threads()} thread, device {device}, "
        f"{args.draws} draws, noise {TYPICAL}; allocator keeps freed memory: {tuned}"
    )
    print(
        f"1-minute load average {load:.2f} on {os.cpu_count()} cores"
        + (
            "  <-- machine is loaded: absolute times are inflated; ratios are measured in the same run"
            if load > 0.5
            else ""
        )
    )
    header = (
        f"{'n':>4} {'ours ms/mat':>12} {'ref ms/mat':>11} {'floor ms/mat':>13} {'ours 64-draw ms':>16} "
        f"{'speedup vs ref':>15} {'ours/floor':>11} {'max|ours-ref|':>14} {'faults/call':>12}"
    )
    print(header)
    draws = args.draws
    for n in args.sizes:
        phases = clements_decompose(haar(n, seed=n))
        gen = torch.Generator().manual_seed(0)
        faults = page_faults()
        ours = median_ms(
            lambda: mesh_matrix(phases, draws=draws, noise=TYPICAL, generator=gen, device=device, builder=BUILDER),
            args.repeats,
            sync,
        )
        faults = (page_faults() - faults) / (args.repeats + 1)
        k_total = phases.n_mzi

        def ref_run() -> torch.Tensor:
            chip = sample_chip(n, TYPICAL, gen, draws=draws)
            z = torch.randn((draws, 2 * k_total + n), generator=gen)
            return reference_mesh(phases, TYPICAL, chip, z, device)

        ref = median_ms(ref_run, max(1, min(3, args.repeats)) if n <= 64 else 1, sync)
        a = torch.randn(draws, n, n, dtype=torch.complex64, device=device)
        b = torch.randn(draws, n, n, dtype=torch.complex64, device=device)
        floor = median_ms(lambda: torch.bmm(a, b), 4 * args.repeats, sync)
        # same chips, no per-draw phase noise: the two implementations must agree
        chip = sample_chip(n, TYPICAL, torch.Generator().manual_seed(1), draws=4)
        det = MeshNoise(**{**TYPICAL.__dict__, "phase_std": 0.0})
        err = float(
            (
                mesh_matrix(phases, draws=4, noise=det, chip=chip, device=device, builder=BUILDER)
                - reference_mesh(phases, det, chip, None, device)
            )
            .abs()
            .max()
        )
        print(
            f"{n:>4} {ours / draws:>12.4f} {ref / draws:>11.4f} {floor / draws:>13.5f} {ours:>16.2f} "
            f"{ref / ours:>14.1f}x {ours / floor:>10.1f}x {err:>14.1e} {faults:>12.0f}"
        )
    u = haar(64, seed=64)
    dec = median_ms(lambda: clements_decompose(u), 5, lambda: None)
    print(f"clements_decompose n=64: {dec:.1f} ms (median of 5)")
    many_meshes(device, sync, args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"1-minute load average after: {load:.2f}")


if __name__ == "__main__":
    main()
