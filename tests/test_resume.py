"""Fault tolerance with real subprocesses and real signals: SIGKILL (also mid-save) and
SIGTERM, then the same command again; retention; corrupt checkpoints; NaN losses;
restoring onto another mesh; init_from."""

import contextlib
import json
import os
import random
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxft import checkpoint, data, hf, loop, optim, report, sharding, train
from flaxft import config as config_lib
from flaxft.errors import InputError
from flaxft.models import ARCHITECTURES
from tests.tiny import (
    RUN,
    logged_step,
    losses,
    run_main,
    start_main,
    steps_on_disk,
    tiny_config,
    tmpfs,
    wait_for,
    write_corpus,
)

FIXTURE = Path(__file__).parent / "fixtures" / "workdir_v0"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference_workdir(corpus, tmp_path_factory) -> Path:
    """The workdir of the uninterrupted run (finished: do not change it)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_main(corpus, workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(losses(workdir)) == RUN["num_train_steps"]
    return workdir


@pytest.fixture(scope="module")
def reference(reference_workdir) -> list[float]:
    """Losses of the uninterrupted run."""
    return losses(reference_workdir)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, corpus, reference):
    seed = int(os.environ.get("FLAXFT_KILL_SEED", random.randrange(2**32)))
    kill_after = random.Random(seed).randrange(RUN["checkpoint_every_steps"] + 1, RUN["num_train_steps"] - 1)
    print(f"killing after step {kill_after} (FLAXFT_KILL_SEED={seed} repeats this)")
    process = start_main(corpus, tmp_path)
    wait_for(lambda: logged_step(tmp_path) >= kill_after and steps_on_disk(tmp_path), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    where = f"killed after step {kill_after} (FLAXFT_KILL_SEED={seed})"
    assert logged_step(tmp_path) < RUN["num_train_steps"], where
    assert (tmp_path / ".flaxft.lock").exists()  # SIGKILL left the workdir's lock behind
    result = run_main(corpus, tmp_path)
    assert result.returncode == 0, where + "\n" + result.stdout + result.stderr
    assert f"was left by a run that is gone (pid {process.pid} on host" in result.stdout, where
    assert "resumed from step" in result.stdout, where
    assert losses(tmp_path) == reference, where


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resumes_bit_identically(tmp_path, corpus, reference):
    process = start_main(corpus, tmp_path)
    wait_for(lambda: logged_step(tmp_path) >= 6, process)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 130, out[-3000:]
    stopped = int(out.split("interrupted: stopped at step ")[1].split(";")[0])
    assert stopped in steps_on_disk(tmp_path) and "Traceback" not in out, out[-3000:]
    result = run_main(corpus, tmp_path)
    assert result.returncode == 0 and f"resumed from step {stopped}" in result.stdout, result.stdout
    assert losses(tmp_path) == reference


@pytest.mark.slow
def test_sigkill_during_an_async_save(tmp_path, corpus, reference):
    process = start_main(corpus, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    saving = lambda: checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir())  # noqa: E731
    wait_for(saving, process, poll=0.001)
    half_written = sorted(p.name for p in checkpoints.iterdir() if "tmp" in p.name)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert half_written and not all(p.split(".")[0] in map(str, steps_on_disk(tmp_path)) for p in half_written)
    result = run_main(corpus, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert losses(tmp_path) == reference
    assert not any("tmp" in p.name for p in checkpoints.iterdir())  # the half-written step was cleaned up
    assert steps_on_disk(tmp_path) == [8, 12, 16]  # and saving that step again worked


@pytest.mark.slow
def test_sigterm_saves_and_exits_0_then_resumes(tmp_path, corpus, reference):
    process = start_main(corpus, tmp_path)
    wait_for(lambda: logged_step(tmp_path) >= 6, process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    stopped = int(out.split("preempted: stopped at step ")[1].split(";")[0])
    assert stopped < RUN["num_train_steps"] and stopped in steps_on_disk(tmp_path), out
    result = run_main(corpus, tmp_path)
    assert result.returncode == 0 and f"resumed from step {stopped}" in result.stdout, result.stdout
    assert losses(tmp_path) == reference


@pytest.mark.slow
def test_retention_policy_across_restarts(tmp_path, corpus):
    policy = {"checkpoint_every_steps": 2, "checkpoint.keep": 2, "checkpoint.keep_every_steps": 8}
    assert run_main(corpus, tmp_path, num_train_steps=10, **policy).returncode == 0
    assert steps_on_disk(tmp_path) == [8, 10]
    assert run_main(corpus, tmp_path, **policy).returncode == 0
    assert steps_on_disk(tmp_path) == [8, 14, 16]


def _truncate_newest(workdir: Path) -> Path:
    """Cuts every parameter data file of the newest step in half, as a full disk would."""
    newest = workdir / "checkpoints" / str(steps_on_disk(workdir)[-1])
    data_files = [p for p in (newest / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for file in data_files:
        with open(file, "r+b") as f:
            f.truncate(file.stat().st_size // 2)
    return newest


@pytest.mark.slow
def test_truncated_newest_checkpoint_with_and_without_fallback(tmp_path, corpus, reference):
    assert run_main(corpus, tmp_path, num_train_steps=8).returncode == 0
    newest = _truncate_newest(tmp_path)
    result = run_main(corpus, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(newest) in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_main(corpus, tmp_path, **{"checkpoint.fallback": True})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from step 4" in result.stdout and (tmp_path / "checkpoints" / "8.corrupt").is_dir()
    assert losses(tmp_path) == reference


@pytest.mark.slow
def test_a_finished_workdir_tells_what_changed(tmp_path, corpus, reference_workdir):
    """Another model: exit 2 listing the fields (even though the run had finished);
    other keys: named on one line; a longer run continues, saying the schedule changed."""
    shutil.copytree(reference_workdir, tmp_path / "w")
    workdir = tmp_path / "w"
    result = run_main(corpus, workdir, **{"model.intermediate_size": 48})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "intermediate_size 64 != 48" in result.stderr and "checkpoints/16" in result.stderr
    assert json.loads((workdir / "config.json").read_text())["model"]["intermediate_size"] == 64
    result = run_main(corpus, workdir, learning_rate=0.001)
    assert result.returncode == 0 and "already trained to step 16" in result.stdout
    assert "written with another config: learning_rate 0.005 -> 0.001" in result.stdout
    result = run_main(corpus, workdir, num_train_steps=18)
    assert result.returncode == 0 and "resumed from step 16" in result.stdout, result.stdout + result.stderr
    assert "num_train_steps 16 -> 18: the learning-rate schedule now runs to step 18" in result.stdout
    assert [r["step"] for r in report.read_metrics(workdir) if "loss" in r] == list(range(1, 19))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["abort", "skip"])
def test_nan_in_a_batch(tmp_path, corpus, monkeypatch, mode):
    real_get_batch = data.PretrainLoader.get_batch

    def poisoned(self, step):
        batch = real_get_batch(self, step)
        if step == 5 and self.shuffle:  # the training loader's sixth batch
            batch["masked_weights"] = batch["masked_weights"] * np.nan
        return batch

    monkeypatch.setattr(data.PretrainLoader, "get_batch", poisoned)
    config = tiny_config(corpus, **{**RUN, "num_train_steps": 8, "checkpoint_every_steps": 1, "checkpoint.keep": 10,
                                    "on_nonfinite": mode})
    if mode == "abort":
        with pytest.raises(loop.NonFiniteLoss, match="step 6"):
            train.run(config, str(tmp_path))
        assert steps_on_disk(tmp_path)[-1] == 5  # the last good state
        return
    train.run(config, str(tmp_path))
    records = [r for r in report.read_metrics(tmp_path) if "loss" in r]
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert np.isfinite(records[-1]["loss"])
    five, six = (checkpoint.load_model(tmp_path / "checkpoints" / str(s))[1] for s in (5, 6))
    jax.tree.map(np.testing.assert_array_equal, five, six)  # the poisoned update was dropped


@pytest.mark.slow
def test_restore_onto_another_mesh(tmp_path, corpus):
    config = tiny_config(corpus, **{**RUN, "num_train_steps": 4, "mesh.data": 1, "mesh.fsdp": 8})
    train.run(config, str(tmp_path))
    saved_model, saved = checkpoint.load_model(tmp_path)  # onto one device
    for mesh_sizes in ({"data": 2, "fsdp": 1, "tensor": 4}, {"data": 1, "fsdp": 2, "tensor": 4}):
        other = tiny_config(corpus, **{f"mesh.{k}": v for k, v in mesh_sizes.items()})
        mesh, rules = sharding.make_mesh(other.mesh), sharding.logical_rules(other.mesh)
        model = ARCHITECTURES["BertForPreTraining"](config_lib.model_config(other))
        shardings, abstract = loop.abstract_state(model, optim.make_optimizer(other), mesh, rules,
                                                 jax.random.key(0), 32)
        ckpt = checkpoint.TrainCheckpointer(tmp_path)
        state, data_state, step = ckpt.restore_latest(loop.with_shardings(abstract, shardings), model, False)
        ckpt.close()
        assert step == 4 and data_state["step"] == 4
        kernel = state.params["bert"]["encoder"]["layer_0"]["mlp"]["intermediate"]["kernel"]  # [32, 64]
        assert kernel.sharding.spec[1] == "tensor" and kernel.addressable_shards[0].data.shape[1] == 16
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), saved)
    assert type(saved_model).__name__ == "BertForPreTraining"


@pytest.mark.slow
def test_init_from_each_source(tmp_path, corpus, minilm_dir):
    # A flaxft workdir: parameters come over, the new run starts at step 0.
    source = tmp_path / "source"
    train.run(tiny_config(corpus, **{**RUN, "num_train_steps": 2}), str(source))
    _, source_params = checkpoint.load_model(source)
    model = ARCHITECTURES["BertForMaskedLM"](config_lib.model_config(tiny_config(corpus)))
    params = checkpoint.load_init_params(str(source), model, seed=0)
    assert "nsp" not in params and "pooler" not in params["bert"]
    np.testing.assert_array_equal(params["mlm"]["bias"], source_params["mlm"]["bias"])
    train.run(tiny_config(corpus, **{**RUN, "num_train_steps": 2, "init_from": str(source)}), str(tmp_path / "new"))
    assert [r["step"] for r in report.read_metrics(tmp_path / "new") if "loss" in r] == [1, 2]

    # A Hugging Face folder (the real MiniLM): its encoder, fresh MLM and NSP heads.
    hf_config = json.loads((minilm_dir / "config.json").read_text())
    big = tiny_config(corpus, **{f"model.{k}": hf_config[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings")})
    model = ARCHITECTURES["BertForPreTraining"](config_lib.model_config(big))
    params = checkpoint.load_init_params(str(minilm_dir), model, seed=0)
    _, minilm = hf.from_pretrained(minilm_dir)
    jax.tree.map(np.testing.assert_array_equal, params["bert"], minilm["bert"])
    assert params["mlm"]["transform"]["kernel"].shape == (384, 384)

    # Shapes that do not fit: a clear error naming the parameter.
    wide = ARCHITECTURES["BertForPreTraining"](config_lib.model_config(tiny_config(corpus, **{"model.hidden_size": 48})))
    with pytest.raises(InputError, match=r"bert/embeddings/LayerNorm/bias has shape \(32,\) .* needs \(48,\)"):
        checkpoint.load_init_params(str(source), wide, seed=0)


def test_stderr_during_a_restore_is_replayed_on_success_and_dropped_on_failure(capfd):
    with checkpoint._stderr_dropped_on_error():
        os.write(2, b"kept\n")
    with pytest.raises(ValueError), checkpoint._stderr_dropped_on_error(settle_s=0.0):
        os.write(2, b"dropped\n")
        raise ValueError("damaged")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept\nafter\n"


def test_a_workdir_written_before_the_reshaped_core_resumes_bit_identically(tmp_path):
    """tests/fixtures/workdir_v0 was written by the code before issue 13 (a run stopped
    after saving step 8 of 16): the current code resumes it and logs what the old code
    logged for steps 9-16, evaluation included. Equal up to float rounding: XLA:CPU's
    code for another CPU model may round the last bit differently (bit-identical resume
    on one machine is checked by the other resume tests)."""
    workdir = tmp_path / "workdir"
    shutil.copytree(FIXTURE / "workdir", workdir)
    config = tiny_config(FIXTURE / "docs.jsonl", num_train_steps=16, log_every_steps=1, eval_every_steps=8,
                         checkpoint_every_steps=8, **{"checkpoint.keep": 2})
    train.run(config, str(workdir))
    timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in records]  # noqa: E731
    reference = [json.loads(line) for line in (FIXTURE / "reference_metrics.jsonl").read_text().splitlines()]
    got, want = timeless(report.read_metrics(workdir)), timeless(reference)
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for got_record, want_record in zip(got, want):
        assert got_record == pytest.approx(want_record, rel=1e-6, abs=1e-7), got_record["step"]
    assert [r["step"] for r in reference if "eval_loss" in r] == [8, 16]


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_stops_the_run_there_and_the_rerun_resumes(tmp_path, corpus, reference):
    """The disk (a real tmpfs) fills right after checkpoint 4: the next save fails; the run
    stops at it with exit 1 and one line naming the step and the OS error, checkpoint 4
    stays intact, and once there is room again the same command resumes and ends as the
    uninterrupted run did (logging only at steps 1 and 16, so the checkpoint is the first
    write that finds the disk full)."""
    run = dict(log_every_steps=16)
    with tmpfs(tmp_path / "disk", "48m") as disk:
        workdir = disk / "work"
        process = start_main(corpus, workdir, **run)
        wait_for(lambda: steps_on_disk(workdir) == [4], process)
        filler = disk / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 1, out[-3000:]
        (line,) = [x for x in out.splitlines() if x.startswith("error: ")]
        assert "saving the checkpoint of step " in line and "No space left on device" in line, line
        newest = steps_on_disk(workdir)[-1]
        assert f"the newest complete checkpoint is {workdir / 'checkpoints' / str(newest)}" in line
        assert not any(x.startswith(("Traceback", "ERROR")) for x in out.splitlines()), out[-3000:]
        filler.unlink()
        again = run_main(corpus, workdir, **run)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert f"resumed from step {newest}" in again.stdout
        resumed = {r["step"]: r["loss"] for r in report.read_metrics(workdir) if "loss" in r}
        assert (resumed[1], resumed[16]) == (reference[0], reference[15])  # bit for bit
