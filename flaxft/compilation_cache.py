"""The persistent compilation cache: what a run compiles (its train and eval steps, the
optimizer's init, ...) is kept on disk, so the next run of the same shapes (same model,
batch, mesh, jax and XLA) loads it instead of compiling again: seconds per step function.

config.compilation_cache_dir says where:
- "auto" (the default): $JAX_COMPILATION_CACHE_DIR when set (jax's own variable, which the
  tests point at their own folder), else $XDG_CACHE_HOME/flaxft/jax, else
  ~/.cache/flaxft/jax;
- a folder (made if missing);
- "" for none: every run compiles afresh.

Every compilation is kept, even sub-second ones (jax keeps only those over 1 s by default).
Entries are a few hundred KB each and the folder is never pruned: delete it to reclaim the
space. As jax warns, a cache folder is trusted code: never share it with users you do not
trust.
"""

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

AUTO = "auto"


def cache_dir(setting: str) -> Path | None:
    """The folder `setting` (config.compilation_cache_dir) names, or None for no cache."""
    if setting == AUTO:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
        user_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(user_cache) / "flaxft" / "jax"
    return Path(setting).expanduser() if setting else None


def use(setting: str) -> Path | None:
    """Points this process's compilations at `setting`'s cache folder (none for ""), from
    the next compilation on; returns the folder."""
    path = cache_dir(setting)
    value = None if path is None else str(path)
    if jax.config.jax_compilation_cache_dir != value:
        jax.config.update("jax_compilation_cache_dir", value)
        compilation_cache.reset_cache()  # jax opens its folder once, at the first compilation
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
