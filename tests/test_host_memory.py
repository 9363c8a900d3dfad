"""flaxft.host_memory: the entry points re-execute themselves once with glibc's malloc on
transparent huge pages, and large blocks then fault in 2 MB at a time."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flaxft.host_memory import HUGETLB_TUNABLE, accelerator_expected, huge_pages_available

REPO = Path(__file__).resolve().parents[1]

# Re-execs with the tunable, then writes a fresh 256 MB malloc block and prints the
# tunables it ran with and the minor page faults the write took.
_WRITE_BLOCK = """
import ctypes, ctypes.util, os, resource
from flaxft.host_memory import exec_with_huge_pages
exec_with_huge_pages()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
block = libc.malloc(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(block, 1, size)
print(os.environ.get("GLIBC_TUNABLES", ""))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def write_block(tunables: str | None, **environ: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | environ
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _WRITE_BLOCK], capture_output=True, text=True, env=env, check=True,
                         cwd=REPO)
    used, faults = out.stdout.split("\n")[:2]
    return used, int(faults)


@pytest.mark.skipif(not huge_pages_available(), reason="needs Linux, glibc and transparent huge pages")
def test_entry_points_run_on_huge_pages():
    small_pages = (256 << 20) // 4096
    used, faults = write_block(None)
    assert used == HUGETLB_TUNABLE
    assert faults < small_pages // 20  # 2 MB pages: 128 faults where 4 KB pages take 65536
    # A user's own setting is kept, and an explicit hugetlb=0 turns it off.
    used, _ = write_block("glibc.malloc.arena_max=2")
    assert used == f"glibc.malloc.arena_max=2:{HUGETLB_TUNABLE}"
    used, faults = write_block("glibc.malloc.hugetlb=0")
    assert used == "glibc.malloc.hugetlb=0" and faults > small_pages // 2
    # Where jax will run on an accelerator the process is left as it started.
    used, _ = write_block(None, JAX_PLATFORMS="cuda")
    assert used == ""


@pytest.mark.parametrize("platforms, expected", [("cpu", False), ("cpu,cuda", False), ("cuda", True),
                                                 ("tpu,cpu", True), ("rocm", True)])
def test_jax_platforms_decide_the_backend(platforms, expected):
    assert accelerator_expected({"JAX_PLATFORMS": platforms}) is expected


@pytest.mark.parametrize("plugin, expected", [(None, False), ("xla_cuda12", os.path.exists("/dev/nvidiactl")),
                                              ("some_accelerator", True)])
def test_installed_plugins_decide_without_jax_platforms(tmp_path, plugin, expected):
    """Without JAX_PLATFORMS: a PJRT plugin module under the jax_plugins namespace counts
    when its kind's device is present (a CUDA plugin on a machine without a GPU does not)."""
    if plugin:
        (tmp_path / "jax_plugins").mkdir()
        (tmp_path / "jax_plugins" / f"{plugin}.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    code = "from flaxft.host_memory import accelerator_expected; print(accelerator_expected())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == str(expected)
