"""Back large host allocations with transparent huge pages.

XLA:CPU allocates a step's temporaries as one large buffer with malloc and frees it when
the step ends. glibc serves a block that large with a fresh mmap and unmaps it on free, so
every step the kernel faults in and zeroes every 4 KB page again, in system CPU time.
With glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages
(2 MB) instead: hundreds of times fewer faults, fewer TLB misses, the same peak memory
(the measurements are in the README's benchmark section).

Tunables are read when a process starts, so the command line entry points re-execute
themselves once with the tunable set (`exec_with_huge_pages`). That pays where XLA:CPU
runs the step; where jax's default backend will be a GPU or TPU (`accelerator_expected`,
decided before jax is imported) the step's buffers live on the device and the process
is left as it started.
"""

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
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


# Device nodes that show an accelerator of a plugin's kind is present (a plugin installed on
# a machine without one leaves jax on the CPU).
_DEVICE_NODES = {"cuda": ("/dev/nvidiactl",), "rocm": ("/dev/kfd",), "tpu": ("/dev/accel*", "/dev/vfio/[0-9]*")}


def _kind(name: str) -> str:
    """The accelerator kind a platform or plugin module name stands for ("" unknown)."""
    name = name.lower()
    return next((kind for kind in ("cuda", "rocm", "tpu") if kind in name), "")


def accelerator_expected(environ=os.environ) -> bool:
    """Whether jax's default backend will be a GPU or TPU, read without importing jax:
    the first platform JAX_PLATFORMS names when it is set ("cpu": no); otherwise whether
    a PJRT plugin is installed (a `jax_plugins` module or entry point, or libtpu) whose
    device is present (a CUDA plugin with /dev/nvidiactl, ROCm with /dev/kfd, TPU with
    /dev/accel* or /dev/vfio; a plugin of another kind counts as present)."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0].lower() != "cpu"
    names = [entry.value for entry in importlib.metadata.entry_points(group="jax_plugins")]
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        names += [module.name for module in pkgutil.iter_modules(namespace.submodule_search_locations)]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    for name in names:
        nodes = _DEVICE_NODES.get(_kind(name))
        if nodes is None or any(glob.glob(pattern) for pattern in nodes):
            return True
    return False


def exec_with_huge_pages() -> None:
    """Re-executes this process's command with `HUGETLB_TUNABLE` added to GLIBC_TUNABLES,
    unless it is there already (or set otherwise by the user: `glibc.malloc.hugetlb=0`
    turns this off), huge pages are unavailable, or jax will run on an accelerator
    (`accelerator_expected`). Call first thing in a `__main__` block: nothing after it
    runs twice."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or not huge_pages_available() or accelerator_expected():
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGETLB_TUNABLE) if t))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
