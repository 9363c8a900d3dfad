"""Command-line plumbing shared by the entry points: offline defaults, absl flags with an
ml-collections config file, every parse error reported as one line with exit code 2."""

import ast
import contextlib
import json
import os
import sys
import threading
from collections.abc import Collection

import ml_collections
from absl import flags
from ml_collections import config_flags

from flaxft.errors import InputError, before_exit, fail

OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline_defaults() -> None:
    """Nothing is downloaded unless the user asks (HF_HUB_OFFLINE=0 ...), and the fast
    tokenizers do not start their own threads. Call before Hugging Face libraries are
    imported: they read these once."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")
# Pairs of keys that exclude each other, each with its "not set" value: when the command line
# sets one of a pair, the config file's value of the other gives way.
EXCLUSIVE_KEYS = (
    (("num_train_steps", 0), ("task.epochs", 0.0)),
    (("warmup_steps", 0), ("warmup_ratio", 0.0)),
)


def define_config_flag():
    """--config: an ml-collections config file, locked (overrides may only set existing
    keys); and --print_config, which prints the resolved config and exits."""
    flags.DEFINE_bool("print_config", False, "Print the resolved config (file plus overrides) as JSON and exit.")
    return config_flags.DEFINE_config_file(
        "config", None, "Path to an ml-collections config file; override any key with --config.KEY=VALUE "
        "(every key, with its default and meaning, is in flaxft/config.py).", lock_config=True)


def parse_flags(doc: str) -> ml_collections.ConfigDict:
    """Parses sys.argv and returns the config, with EXCLUSIVE_KEYS resolved. --help prints
    `doc` (the entry point's docstring) and the flags, then exits 0; --print_config prints
    the validated config and exits 0. A bad flag, stray argument, missing config file or
    invalid config exits 2 with one line."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(usage(doc))
        sys.exit(0)
    try:
        argv = flags.FLAGS(sys.argv)
    except Exception as e:  # unknown override keys, bad values
        fail(f"bad command line: {_readable(e)}")
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_flag = flags.FLAGS["config"]
    config_file = config_flag.present and config_flags.get_config_filename(config_flag)
    if not config_file:
        fail("--config is required (e.g. --config configs/pretrain_tiny.py)")
    if not os.path.isfile(config_file.split(":")[0]):
        fail(f"{config_file}: no such config file")
    config = config_flag.value
    give_way_to_overrides(config, config_flags.get_override_values(config_flag))
    if flags.FLAGS.print_config:
        from flaxft import config as config_lib

        try:
            config_lib.validate(config)
        except InputError as e:
            fail(str(e))
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        sys.exit(0)
    return config


def give_way_to_overrides(config: ml_collections.ConfigDict, overridden: Collection[str]) -> None:
    """Of each pair of EXCLUSIVE_KEYS, resets the one the config file set to its "not set"
    value when `overridden` (the dotted keys the command line set) holds the other only."""
    for pair in EXCLUSIVE_KEYS:
        for (key, _), (other, other_unset) in (pair, pair[::-1]):
            if key in overridden and other not in overridden:
                _set(config, other, other_unset)


def usage(doc: str) -> str:
    """`doc` and the entry point's own flags with their help and defaults."""
    lines = [doc.strip(), "", "Flags:"]
    for module, module_flags in sorted(flags.FLAGS.flags_by_module_dict().items()):
        if module.startswith("absl"):  # absl's own logging flags
            continue
        for flag in sorted(module_flags, key=lambda f: f.name):
            default = "" if flag.default is None else f" (default: {flag.default_as_str})"
            lines.append(f"  --{flag.name}: {flag.help}{default}")
    return "\n".join(lines)


def drop_console_lines(prefix: bytes) -> None:
    """Passes this process's stdout (fd 1, so native code's too) through a thread that
    drops the lines starting with `prefix` (gloo's TCP transport prints one per connection,
    and nothing turns that off). Until exit, stdout is a pipe (no in-place progress line)."""
    console = os.dup(1)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not line.startswith(prefix):
                    os.write(console, line)

    thread = threading.Thread(target=pump, name="console-filter", daemon=True)
    thread.start()

    def stop() -> None:
        sys.stdout.flush()
        os.dup2(console, 1)  # closes the pipe's last write end: the pump drains it and ends
        thread.join(timeout=5)

    before_exit(stop)


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        config = config[parent]
    config[leaf] = value


def _readable(error: Exception) -> str:
    """absl/ml_collections wrap some messages in a repr; unwrap them."""
    text = str(error)
    if text[:1] in "'\"":
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text)
    return text
