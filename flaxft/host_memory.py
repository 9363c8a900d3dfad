"""Back large host allocations with transparent huge pages.

XLA:CPU allocates a step's temporaries as one large buffer with malloc and frees it when
the step ends. glibc serves a block that large with a fresh mmap and unmaps it on free, so
every step the kernel faults in and zeroes every 4 KB page again, in system CPU time.
With glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages
(2 MB) instead: hundreds of times fewer faults, fewer TLB misses, the same peak memory
(the measurements are in the README's benchmark section).

Tunables are read when a process starts, so the command line entry points re-execute
themselves once with the tunable set (`exec_with_huge_pages`).
"""

import os
import platform
import sys

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """Linux with glibc whose kernel grants transparent huge pages on request."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def exec_with_huge_pages() -> None:
    """Re-executes this process's command with `HUGETLB_TUNABLE` added to GLIBC_TUNABLES,
    unless it is there already (or set otherwise by the user) or huge pages are
    unavailable. Call first thing in a `__main__` block: nothing after it runs twice."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or not huge_pages_available():
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGETLB_TUNABLE) if t))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
