"""Allocator tuning: with it, a freed block of tens of MB is reused from the heap instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from uhnas.allocator import keep_freed_memory

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

SCRIPT = """
import ctypes, sys
from uhnas.allocator import keep_freed_memory, page_faults
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 20 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = page_faults()
touch()
print(page_faults() - before)
"""


@glibc
def test_keep_freed_memory_reuses_freed_blocks() -> None:
    def second_touch_faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.strip())

    pages = (20 << 20) // 4096
    assert second_touch_faults("default") > pages // 2  # glibc maps the block afresh: every page faults again
    assert second_touch_faults("tuned") < pages // 20  # the heap keeps it


@glibc
def test_keep_freed_memory_is_idempotent() -> None:
    assert keep_freed_memory() and keep_freed_memory()
