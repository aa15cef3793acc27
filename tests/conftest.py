"""Test-wide settings: one intra-op thread per process.

Several tests run searches, workers and subprocesses side by side on a 2-core machine; with torch's default
of one OpenMP thread per core, concurrent processes oversubscribe the cores and spin-waiting threads slow
everything down many times over. One thread per process keeps the suite fast and its timings stable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by worker processes and subprocesses
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
