"""Orbax checkpoints of flaxft models.

A flaxft checkpoint folder is laid out like a workdir:

    DIR/checkpoints/<step>/params   model parameters (Orbax PyTree, unrolled or scanned)
    DIR/checkpoints/<step>/model    JSON: {"architecture": ..., "config": the model config's to_dict()}
    DIR/tokenizer/                  tokenizer files, when the model came with a tokenizer

Readers accept the workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder.
Restores are abstract: the parameter shapes come from `jax.eval_shape`, never from
building the model on one device first.
"""

import contextlib
import dataclasses
import functools
import gc
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from flaxft import hf
from flaxft.data.tokenizer import copy_tokenizer_files, write_workdir_tokenizer
from flaxft.errors import InputError
from flaxft.files import (
    CHECKPOINTS,
    MODEL_RECORD,
    SENTENCE_TRANSFORMERS,
    TOKENIZER,
    PathKind,
    kind_of,
    new_output_dir,
    replaced_atomically,
)
from flaxft.models import abstract_params, family_of, fit_params, lora
from flaxft.report import CONFIG_FILE


def model_record(model: nn.Module) -> dict:
    """The JSON record naming a model's architecture and config."""
    return {"architecture": type(model).__name__, "config": model.config.to_dict()}


def model_from_record(record: dict, source: str) -> nn.Module:
    """The model a record names (its family found by the architecture name)."""
    architecture = str(record.get("architecture"))
    try:
        family = family_of(architecture)
    except InputError:
        raise InputError(f"{source}: unknown architecture {architecture!r}") from None
    return family.architectures[architecture](family.config_class.from_dict(record["config"]))


def _on_one_device(model: nn.Module) -> dict:
    """ShapeDtypeStructs of `model`'s params (unboxed), placed on the first device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract_params(model))


def save_model(out_dir: str | os.PathLike, model: nn.Module, params: dict, source_dir: str | None = None) -> Path:
    """Writes `model` and `params` as step 0 of a new flaxft checkpoint folder, with the
    tokenizer and sentence-transformers files of the Hugging Face folder `source_dir`.

    The folder appears whole or not at all; an existing non-empty `out_dir` is an
    InputError (nothing is overwritten).
    """
    with new_output_dir(out_dir) as tmp:
        if source_dir is not None:
            copy_tokenizer_files(source_dir, tmp / TOKENIZER)
            hf.copy_sentence_transformers_files(source_dir, tmp / SENTENCE_TRANSFORMERS)
        with ocp.CheckpointManager(tmp / CHECKPOINTS) as manager:
            manager.save(
                0,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(nn.meta.unbox(params)),
                    **{MODEL_RECORD: ocp.args.JsonSave(model_record(model))},
                ),
            )
            manager.wait_until_finished()
    return Path(out_dir).absolute()


def locate(path: str | os.PathLike) -> tuple[Path, int]:
    """(checkpoints root, step) for a workdir, a checkpoints folder or a step folder.

    The newest complete step is taken unless a step folder is named."""
    p = Path(path).absolute()
    if not p.exists():
        raise InputError(f"{p}: no such checkpoint or workdir")
    kind = kind_of(p)
    if kind is PathKind.WORKDIR:
        p = p / CHECKPOINTS
    elif kind is PathKind.STEP:
        return p.parent, int(p.name)
    with ocp.CheckpointManager(p) as manager:
        step = manager.latest_step()
    if step is None:
        raise InputError(f"{p}: holds no complete flaxft checkpoint")
    return p, step


def tokenizer_dir_of(path: str | os.PathLike) -> Path | None:
    """The tokenizer folder saved with the checkpoint at `path`, if any."""
    root, _ = locate(path)
    folder = root.parent / TOKENIZER
    return folder if folder.is_dir() else None


def sentence_transformers_dir_of(path: str | os.PathLike) -> Path | None:
    """Where the sentence-transformers files of a model source are: the Hugging Face
    folder itself, or the folder a flaxft checkpoint keeps them in; None if it has none."""
    if kind_of(path) is PathKind.HF_FOLDER:
        folder = Path(path)
    else:
        root, _ = locate(path)
        folder = root.parent / SENTENCE_TRANSFORMERS
    return folder if (folder / "modules.json").is_file() else None


def run_files_writer(write_tokenizer: Callable[[Path], object] | None, init_from: str) -> Callable[[Path], None]:
    """What a new run writes into its workdir besides checkpoints and metrics (see
    `flaxft.contracts.Run.write_files`): its tokenizer (`write_tokenizer(folder)`), and
    the sentence-transformers files of `init_from`, so exports carry them on."""
    def write(workdir: Path) -> None:
        if write_tokenizer is not None:
            write_workdir_tokenizer(workdir, write_tokenizer)
        source = sentence_transformers_dir_of(init_from) if init_from else None
        if source is not None and not (workdir / SENTENCE_TRANSFORMERS).exists():
            with replaced_atomically(workdir / SENTENCE_TRANSFORMERS) as staging:
                hf.copy_sentence_transformers_files(source, staging)
    return write


def model_of(path: str | os.PathLike) -> nn.Module:
    """The model a flaxft checkpoint holds (its record only; no arrays are read)."""
    root, step = locate(path)
    with ocp.CheckpointManager(root) as manager:
        record = manager.restore(step, args=ocp.args.Composite(**{MODEL_RECORD: ocp.args.JsonRestore()}))[MODEL_RECORD]
    return model_from_record(record, str(root / str(step)))


def run_config_of(path: str | os.PathLike) -> dict:
    """The resolved config (config.json) of the run whose workdir holds the checkpoint at
    `path`; {} for a checkpoint folder without one (`save_model`'s, import-hf's)."""
    root, _ = locate(path)
    file = root.parent / CONFIG_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{file}: not valid JSON ({e})") from None


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """(model, params) from a flaxft checkpoint, as saved."""
    root, step = locate(path)
    model = model_of(path)
    with ocp.CheckpointManager(root) as manager:
        params = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_on_one_device(model)))
        )["params"]
    return model, params


def _first_line(error: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_error(error: BaseException) -> str:
    """What the operating system said, when an OS error is behind `error` (Python's, or
    TensorStore's `[os_error_code=N]`), else `_first_line(error)`."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror}: {seen.filename}" if seen.filename else seen.strerror
        seen = seen.__cause__ or seen.__context__
    code = re.search(r"os_error_code='?(\d+)", str(error))
    return os.strerror(int(code.group(1))) if code else _first_line(error)


@contextlib.contextmanager
def _stderr_dropped_on_error(settle_s: float = 0.2):
    """Holds back what is written to stderr (fd 2) while the block runs: written out
    after it when it succeeds, dropped when it raises. A restore that fails on a damaged
    file leaves TensorStore reads that call back into the asyncio loop Orbax has closed,
    and each prints a "RuntimeError: Event loop is closed" traceback from a native
    thread, during the restore and for a moment after (`settle_s`, collected then);
    they must not bury the one-line error. Best effort: if stderr cannot be held (no
    temporary file), the block runs with stderr as it is."""
    sys.stderr.flush()
    try:
        held = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    saved = os.dup(2)
    try:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            gc.collect()
            time.sleep(settle_s)
            raise
        sys.stderr.flush()
        os.dup2(saved, 2)
        held.seek(0)
        try:
            os.write(2, held.read())
        except OSError:  # stderr closed or a broken pipe: nothing to show it on
            pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        held.close()


class SaveFailed(Exception):
    """A checkpoint could not be written (disk full, permission or quota lost, ...)."""


class TrainCheckpointer:
    """Checkpoints of a training run in WORKDIR/checkpoints: params, optimizer state,
    step and skipped-step count, the data loader's position, the model record and the
    resolved config.

    Saves are asynchronous: `save` returns once the arrays are copied off the devices and
    the write goes on in the background; `check` (after every step) raises SaveFailed as
    soon as a finished write turns out to have failed, and `wait` waits for the write and
    checks it. Orbax commits each step atomically (a step that failed or was killed
    mid-write stays a temporary folder, ignored and removed on the next start), so the
    newest complete step is always a good one.
    Retention: the newest `keep` steps, plus every multiple of `keep_every_steps` for good.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, keep_every_steps: int = 0):
        self.root = Path(workdir).absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every_steps or None,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.root, options=options)
        self._unchecked: int | None = None  # the step whose write is not yet known to have worked

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, model: nn.Module, data_state: dict, config_json: dict) -> None:
        """Starts writing `step`; raises SaveFailed if the previous write failed or this
        one cannot start."""
        if self._unchecked is not None:  # Orbax waits for it before starting another anyway
            self.wait()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(state.params),
                    train_state=ocp.args.StandardSave(_train_state_item(state)),
                    **{MODEL_RECORD: ocp.args.JsonSave(model_record(model))},
                    data=ocp.args.JsonSave(data_state),
                    config=ocp.args.JsonSave(config_json),
                ),
            )
        except Exception as e:  # the synchronous part: creating folders, copying arrays off
            raise self._failed(step, e) from e
        self._unchecked = step

    def check(self) -> None:
        """Raises SaveFailed as soon as the write in progress (or the last one) has failed;
        cheap enough to call after every step."""
        if self._unchecked is None:
            return
        step = self._unchecked
        try:
            self.manager.check_for_errors()
            if self.manager.is_saving_in_progress():
                return
            self._unchecked = None  # finished: committed, or failed
            if jax.process_index() == 0 and not (self.root / str(step)).is_dir():
                self.manager.wait_until_finished()  # for the error the writing threads hold
                self.manager.check_for_errors()
                raise self._failed(step, None)
        except SaveFailed:
            raise
        except Exception as e:
            self._unchecked = None
            raise self._failed(step, e) from e

    def _failed(self, step: int, error: BaseException | None) -> SaveFailed:
        committed = [s for s in self.manager.all_steps() if s != step and (self.root / str(s)).is_dir()]
        newest = f"the newest complete checkpoint is {self.root / str(max(committed))}" if committed else (
            "no checkpoint was written before it")
        cause = _os_error(error) if error is not None else "it was not committed"
        return SaveFailed(f"saving the checkpoint of step {step} failed ({cause}); {newest}")

    def restore_latest(self, target, model: nn.Module, fallback: bool):
        """(state, data_state, step) from the newest readable step, placed as `target`'s
        shardings say (a train state of ShapeDtypeStructs); None when there is no step.

        A step written for another model config is an InputError listing the fields that
        differ, and one holding another optimizer state (other trainable parameters, another
        optimizer) an InputError saying so. An unreadable step (truncated or missing files) is an InputError naming
        it, unless `fallback`: then it is set aside as `<step>.corrupt` and the step
        before it is tried.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = self.root / str(step)
            self.check_model(step, model)
            self._check_state_layout(step, target)
            try:
                with _stderr_dropped_on_error():
                    restored = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            params=ocp.args.StandardRestore(target.params),
                            train_state=ocp.args.StandardRestore(_train_state_item(target)),
                            data=ocp.args.JsonRestore(),
                        ),
                    )
            except Exception as e:  # a damaged step: Orbax/TensorStore raise many kinds
                if not fallback:
                    raise InputError(
                        f"{path}: checkpoint is unreadable ({_first_line(e)}); set "
                        "config.checkpoint.fallback=True to resume from the step before it"
                    ) from None
                print(f"{path}: checkpoint is unreadable ({_first_line(e)}); set aside, trying the step before")
                if jax.process_index() == 0:
                    os.replace(path, self.root / f"{step}.corrupt")
                self.manager.reload()
                continue
            item = restored["train_state"]
            state = target.replace(
                step=item["step"], params=restored["params"], opt_state=item["opt_state"], skipped=item["skipped"]
            )
            return state, dict(restored["data"]), step
        return None

    def check_model(self, step: int, model: nn.Module) -> None:
        """InputError listing the model config fields in which `step` was written for
        another model than `model` (or naming it when its model record is unreadable)."""
        _check_same_model(self._read_item(step, MODEL_RECORD), model, self.root / str(step))

    def _check_state_layout(self, step: int, target) -> None:
        """InputError when `step`'s optimizer state has other leaves than `target`'s (config.freeze
        or config.optimizer changed: restoring would fail as if the step were damaged). A step
        whose layout cannot be read is left to the restore to judge."""
        try:
            saved = _leaf_paths(ocp.StandardCheckpointHandler().metadata(self.root / str(step) / "train_state").tree)
        except Exception:
            return
        wanted = _leaf_paths(_train_state_item(target))
        if saved != wanted:
            where, example = ("the checkpoint", min(saved - wanted)) if saved - wanted else (
                "this run", min(wanted - saved))
            raise InputError(f"{self.root / str(step)}: its optimizer state is not this run's ({example} is only in "
                             f"{where}): what trains or the optimizer changed (config.freeze, config.optimizer); "
                             "resume with the config it was written with, or train in a new workdir")

    def saved_config(self, step: int) -> dict:
        """The resolved config (as a dict) that the run which wrote `step` had."""
        return self._read_item(step, "config")

    def _read_item(self, step: int, name: str) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name]
        except Exception as e:
            raise InputError(f"{self.root / str(step)}: checkpoint has no readable {name} record "
                             f"({type(e).__name__})") from None

    def wait(self, check: bool = True) -> None:
        """Waits for the write in progress, then `check`s it; with check=False (a failure
        is already being handled) errors of the write are left to the log."""
        if check:
            try:
                self.manager.wait_until_finished()
            except Exception:  # the write failed: check() says how
                pass
            self.check()
            return
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# Fields that may change between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = ("dtype", "remat_policy", "attention")


def _check_same_model(saved: dict, model: nn.Module, path: Path) -> None:
    """InputError listing the model config fields in which `saved` differs from `model`.
    A field the record lacks (written before the field existed, as the LoRA fields) has
    its default, as `model_from_record` reads it."""
    want = model_record(model)
    defaults = {f.name: f.default for f in dataclasses.fields(model.config)}
    diffs = []
    if saved.get("architecture") != want["architecture"]:
        diffs.append(f"architecture {saved.get('architecture')} != {want['architecture']}")
    for key, value in want["config"].items():
        old = saved.get("config", {}).get(key, defaults[key])
        if key not in _RESUMABLE_CHANGES and old != value:
            diffs.append(f"{key} {old!r} != {value!r}")
    if diffs:
        raise InputError(f"{path} was written for another model (checkpoint vs config): {'; '.join(diffs)}")


def _train_state_item(state) -> dict:
    return {"step": state.step, "opt_state": state.opt_state, "skipped": state.skipped}


def _leaf_paths(tree) -> set[str]:
    """The "/"-joined key paths of a pytree's leaves, keys named as Orbax names them (dict
    keys, NamedTuple fields, sequence indices): a train state and a step's saved metadata
    tree give the same set when their layouts agree."""
    def name(key) -> str:
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

    return {"/".join(name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def has_steps(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds a checkpoint step folder (complete or not) to resume from."""
    folder = Path(workdir) / CHECKPOINTS
    return kind_of(workdir) is PathKind.WORKDIR and any(p.name.isdigit() for p in folder.iterdir())


def init_params_for(run_workdir: str | os.PathLike, init_from: str, model: nn.Module, seed: int):
    """What `flaxft.contracts.Run.init_params` should be for `init_from`: None without
    it; the parameters, read now (so a bad source fails before anything is written), when
    the workdir has nothing to resume; else a function reading them only if every step
    there turns out unreadable."""
    if not init_from:
        return None
    if has_steps(run_workdir):
        return functools.partial(load_init_params, init_from, model, seed)
    params = load_init_params(init_from, model, seed)
    return lambda: params


def load_init_params(path: str | os.PathLike, model: nn.Module, seed: int) -> dict:
    """Parameters for a new run of `model` from `init_from`: a Hugging Face folder or a
    flaxft checkpoint or workdir (a LoRA run's with its adapters merged into the kernels).
    Heads and LoRA adapters the source lacks start afresh; shape mismatches are
    InputErrors naming the parameter. Refitted in one compiled function: op by op,
    initialising a new head (which traces the whole model's init) takes seconds."""
    if kind_of(path) is PathKind.HF_FOLDER:
        params = _read_hf_folder(path, model)
    else:
        _, params = lora.merge(*load_model(path))
    return jax.jit(functools.partial(fit_params, model=model, seed=seed))(params)


def _read_hf_folder(path: str | os.PathLike, model: nn.Module) -> dict:
    """A Hugging Face folder's parameters; for a model trained as several (ELECTRA
    pretraining's, with `join_hf_models`), with those of the subfolders it has (a missing
    one starts afresh, said in one line)."""
    _, params = hf.from_pretrained(path)
    if not hasattr(model, "join_hf_models"):
        return params
    parts = {"": params}
    for folder in model.hf_subfolders:
        if (Path(path) / folder / "config.json").is_file():
            parts[folder] = hf.from_pretrained(Path(path) / folder)[1]
        else:
            print(f"{path} has no {folder}/ folder: the {folder} starts afresh")
    return model.join_hf_models(parts)
