"""The persistent compilation cache: where config.compilation_cache_dir points, its
validation, and that a compilation lands there."""

import jax
import jax.numpy as jnp
import pytest

from flaxft import compilation_cache
from flaxft import config as config_lib
from flaxft.errors import InputError


def test_auto_prefers_jax_variable_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compilation_cache.cache_dir("auto") == tmp_path / "jax"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.cache_dir("auto") == tmp_path / "xdg" / "flaxft" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.cache_dir("auto") == tmp_path / "home" / ".cache" / "flaxft" / "jax"
    assert compilation_cache.cache_dir("~/c") == tmp_path / "home" / "c"
    assert compilation_cache.cache_dir("") is None


def test_a_file_is_no_cache_folder(tmp_path):
    config = config_lib.default_config()
    config.num_train_steps = 1
    (tmp_path / "file").write_text("")
    config.compilation_cache_dir = str(tmp_path / "file")
    with pytest.raises(InputError, match="compilation_cache_dir .* is a file"):
        config_lib.validate(config)
    config.compilation_cache_dir = str(tmp_path / "new")  # made when first used
    config_lib.validate(config)


def test_compilations_land_in_the_folder_and_none_turns_it_off(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        assert compilation_cache.use(str(tmp_path / "cache")) == tmp_path / "cache"
        jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()  # far under a second
        assert any((tmp_path / "cache").iterdir())
        assert compilation_cache.use("") is None and jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.compilation_cache.reset_cache()
