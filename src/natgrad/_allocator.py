"""Keep freed memory in the process for reuse (glibc): large per-step tensors then cost no page faults.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns them
with ``munmap`` when freed. A natural gradient step that materialises an N × d Jacobian, its kernel and their
temporaries (hundreds of MiB, the same sizes every step) therefore makes the kernel map and zero every page of
them again on each step: on the 5-D Poisson PINN (N = 3,500, d = 10,065) that is about a quarter of the step's
CPU time, counted as system time. With mmap disabled and the trim threshold raised, freed blocks stay in the
heap and the next step reuses them. Nothing computed changes (the same operations on the same numbers). The
price is memory: the heap no longer returns it, and over hundreds of steps its free blocks fragment (the 5-D
run grew by about 50 MiB a step), so this is an opt-in for runs of bounded length.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest trim threshold mallopt takes (an int): free memory at the top of the heap up to 2 GiB stays
_TRIM_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse for the rest of the process; True if it took effect.

    Process-wide and one-way (glibc cannot restore its adaptive defaults). Call it once at the start of a run
    that allocates large tensors of the same sizes every step and has memory to spare: the process keeps what
    it freed, and a long run grows as the heap fragments. Returns False, changing nothing, where the C
    library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX))
