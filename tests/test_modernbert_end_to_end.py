"""ModernBERT end to end, as RoBERTa, XLM-R and ELECTRA are tested: one tiny ModernBERT
pretrained by flaxft (with the byte-level BPE it trains on the corpus) gives the single
device's losses on every mesh layout, resumes bit-identically after SIGKILL, and exports
for transformers; fine-tuned from that workdir (classification, QA) or from a Hugging
Face folder with a ModernBERT-style tokenizer (classification with mean pooling, NER),
packed evaluation rows score as unpacked ones and transformers (eager attention, the
exported tokenizer) gives flaxft's logits within 1e-5; `convert import-hf` / `export-hf`
round-trip a transformers ModernBERT bit for bit. No ModernBERT-specific flag anywhere
in fine-tuning."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from flaxft import checkpoint, finetune, pretrain, report, train
from flaxft import config as config_lib
from flaxft.data import load_tokenizer, row_layouts, special_token_ids, tokenizer_kind
from flaxft.data.tokenizer import copy_tokenizer_files
from flaxft.models import family_named
from tests.hf_models import random_hf_model
from tests.test_finetune import (
    assert_same_choices,
    first_subword_scores,
    pair_and_regression_files,
    read_jsonl,
    small_classification,
    squad_spans,
    subset,
    write_jsonl,
)
from tests.test_sharding import LAYOUTS
from tests.tiny import (
    REPO,
    config_flags,
    logged_step,
    losses,
    set_dotted,
    single_device_run,
    steps_on_disk,
    tiny_modernbert_config,
    wait_for,
    write_corpus,
)
from tests.tokenizers_for_tests import modernbert_style_folder

# The shared run: logs every step, evaluates at 8 and 16, saves every 4 steps.
RUN = dict(num_train_steps=16, log_every_steps=1, eval_every_steps=8, checkpoint_every_steps=4)
SEQ_LEN = 64  # fine-tuning rows
ATOL = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory) -> Path:
    """One tiny ModernBERT pretraining run, uninterrupted: the reference of the resume test
    and the init_from of fine-tuning (finished: do not change it)."""
    workdir = tmp_path_factory.mktemp("modernbert")
    train.run(tiny_modernbert_config(corpus, **RUN), str(workdir))
    return workdir


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A ModernBERT-style tokenizer folder (600 ids; [UNK] [CLS] [SEP] [PAD] [MASK] last)."""
    return modernbert_style_folder(tmp_path_factory.mktemp("tokenizer") / "modernbert")


def folder_ids(tokenizer_dir: Path) -> dict[str, int]:
    """The ids of the folder's [CLS], [SEP], [PAD], [MASK] and [UNK], read off its vocabulary."""
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return {role: vocab[f"[{role.upper()}]"] for role in ("cls", "sep", "pad", "mask", "unk")}


def hf_model_config(tokenizer_dir: Path) -> dict:
    """A ModernBERT config.json for the folder's tokenizer: its embedding rows padded to a
    multiple of 64, as ModernBERT pads its 50,280 tokens to 50,368; global attention, then
    two sliding-window layers (4 tokens a side); classifier_pooling "mean"."""
    ids = folder_ids(tokenizer_dir)
    return dict(vocab_size=640, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40,
                local_attention=8, max_position_embeddings=128, classifier_pooling="mean", pad_token_id=ids["pad"],
                bos_token_id=ids["cls"], cls_token_id=ids["cls"], eos_token_id=ids["sep"], sep_token_id=ids["sep"])


@pytest.fixture(scope="module")
def hf_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A random transformers ModernBertForMaskedLM (every weight perturbed) saved with the
    ModernBERT-style tokenizer, as a Hub checkpoint comes."""
    folder = tmp_path_factory.mktemp("hf") / "modernbert"
    random_hf_model("ModernBertForMaskedLM", hf_model_config(tokenizer_dir)).save_pretrained(folder)
    copy_tokenizer_files(tokenizer_dir, folder)
    return folder


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
    """`python -m module args` in a real subprocess (8 CPU devices, as conftest set)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True)


def export_and_verify(workdir: Path, out: Path, architecture: str) -> Path:
    """`convert export-hf` of `workdir` to `out`, then `convert verify` on it, both from the
    command line; the folder holds `architecture`."""
    result = run_cli("flaxft.convert", "export-hf", workdir, out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    verified = run_cli("flaxft.convert", "verify", out)
    assert verified.returncode == 0 and "OK: largest difference" in verified.stdout, verified.stdout + verified.stderr
    return out


def transformers_model(out: Path, architecture: str) -> torch.nn.Module:
    """The exported model as transformers loads it (eager attention), with no missing or
    unexpected weights."""
    model, info = getattr(transformers, architecture).from_pretrained(out, attn_implementation="eager",
                                                                      output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


def both_outputs(out: Path, workdir: Path, architecture: str, batch: dict) -> tuple[object, object]:
    """(transformers' output, flaxft's) of the exported model and of `workdir`'s checkpoint on
    `batch` (input_ids and attention_mask, numpy)."""
    with torch.no_grad():
        theirs = transformers_model(out, architecture)(**{k: torch.tensor(v) for k, v in batch.items()})
    model, params = checkpoint.load_model(workdir)
    return theirs, model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"])


def encode(tokenizer, texts: list, **options) -> dict[str, np.ndarray]:
    """input_ids and attention_mask of `texts` (lists of one or two columns) padded to the longest."""
    batch = tokenizer(*texts, truncation=True, max_length=SEQ_LEN, padding=True, return_tensors="np", **options)
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def finetune_config(init_from: Path, task: str, files: dict, steps: int, **overrides):
    """A fine-tuning run from `init_from` with no model flags: the default config's (BERT's)
    model group, the task's files and a few steps."""
    config = config_lib.default_config()
    config.task.update(name=task, **{k: str(v) for k, v in files.items()})
    config.update(num_train_steps=steps, global_batch_size=16, seq_len=SEQ_LEN, learning_rate=1e-3, warmup_steps=2,
                  log_every_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps,
                  init_from=str(init_from))
    return set_dotted(config, overrides)


def finetune_run(workdir: Path, init_from: Path, task: str, files: dict, steps: int, **overrides) -> dict:
    """`finetune_config`'s run in `workdir`; the last metrics."""
    return train.run(finetune_config(init_from, task, files, steps, **overrides), str(workdir))


def packed_and_unpacked(tmp_path: Path, init_from: Path, task: str, files: dict, steps: int,
                        **overrides) -> tuple[Path, dict]:
    """The run with packed evaluation rows (task.pack "eval": training rows unpacked, as in the
    other run) and with none: the same metrics and predictions. Returns the packed run's
    workdir and evaluation metrics."""
    config = finetune_config(init_from, task, files, steps, **overrides, **{"task.pack": "eval"})
    packed = train.run(config, str(tmp_path / "packed"))
    segments = finetune.setup(config, tmp_path / "packed").evaluation.features.arrays["segment_ids"]
    assert segments.max() > 1  # rows really hold several examples
    unpacked = finetune_run(tmp_path / "unpacked", init_from, task, files, steps, **overrides,
                            **{"task.pack": "none"})
    evaluation = {k: v for k, v in packed.items() if k.startswith("eval_")}
    assert evaluation and evaluation == {k: v for k, v in unpacked.items() if k.startswith("eval_")}
    ours, theirs = (read_jsonl(tmp_path / run / finetune.PREDICTIONS) for run in ("packed", "unpacked"))
    assert [{k: v for k, v in p.items() if k != "probability"} for p in ours] == [
        {k: v for k, v in p.items() if k != "probability"} for p in theirs]
    np.testing.assert_allclose([p.get("probability", 0) for p in ours], [p.get("probability", 0) for p in theirs],
                               rtol=0, atol=1e-6)
    return tmp_path / "packed", evaluation


def shortened(files: dict, fields: tuple[str, ...], words: int) -> dict:
    """The task's files (CSV or JSONL) as JSONL beside them, each record's `fields` cut to
    their first `words` words, so that several examples fit in a row."""
    short = {}
    for split, path in files.items():
        path = Path(path)
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                records = list(csv.DictReader(f))
        else:
            records = read_jsonl(path)
        records = [{**r, **{k: " ".join(r[k].split()[:words]) for k in fields}} for r in records]
        short[split] = write_jsonl(path.with_name(f"{path.stem}_short.jsonl"), records)
    return short


# ----------------------------------------------------------------------------- the tokenizer


def test_a_modernbert_tokenizer_folder_is_read_by_role(tokenizer_dir, tmp_path):
    """Byte-level BPE with [CLS] A [SEP] rows: the kind ModernBERT takes, special tokens by
    role (also from tokenizer.json alone), rows and pairs as transformers builds them."""
    ids = folder_ids(tokenizer_dir)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    assert tokenizer_kind(tokenizer) == "byte_level_bpe"
    family_named("modernbert").check_tokenizer(tokenizer_kind(tokenizer), str(tokenizer_dir))  # no error
    assert special_token_ids(tokenizer) == ids
    (tmp_path / "alone").mkdir()
    shutil.copy(tokenizer_dir / "tokenizer.json", tmp_path / "alone" / "tokenizer.json")
    assert special_token_ids(load_tokenizer(str(tmp_path / "alone"))) == ids  # by spelling, "<|padding|>" aside
    single, pair = row_layouts(tokenizer)
    assert single.specials == ((ids["cls"],), (ids["sep"],))
    assert pair.specials == ((ids["cls"],), (ids["sep"],), (ids["sep"],))

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id, hf_tokenizer.pad_token_id,
            hf_tokenizer.mask_token_id) == (ids["cls"], ids["sep"], ids["pad"], ids["mask"])
    text, other = "The treaty was signed in Reykjavik-Nord.", "Where was the [MASK] signed?"
    assert tokenizer.encode(text).ids == hf_tokenizer(text).input_ids
    assert tokenizer.encode(text, other).ids == hf_tokenizer(text, other).input_ids


def test_pretraining_rows_with_a_modernbert_tokenizer_folder(corpus, tokenizer_dir, tmp_path):
    """data.tokenizer names the folder (the model's embedding rows padded past its 600 ids):
    rows start with [CLS], end with [SEP], pad with [PAD]; masking never picks a special."""
    ids = folder_ids(tokenizer_dir)
    config = modernbert_folder_config(corpus, tokenizer_dir)
    run = pretrain.setup(config, tmp_path / "work")
    batch = run.train_loader.get_batch(0)
    real = batch["attention_mask"] > 0
    lengths = real.sum(1)
    assert (batch["input_ids"][:, 0] == ids["cls"]).all()
    assert (batch["input_ids"][np.arange(len(lengths)), lengths - 1] == ids["sep"]).all()
    assert (batch["input_ids"][~real] == ids["pad"]).all()
    masked = np.take_along_axis(batch["input_ids"], batch["masked_positions"], 1)[batch["masked_weights"] > 0]
    assert (masked == ids["mask"]).mean() > 0.5
    labels = batch["masked_labels"][batch["masked_weights"] > 0]
    assert not np.isin(labels, list(ids.values())).any()


def modernbert_folder_config(corpus: Path, tokenizer_dir: Path, **overrides):
    """The tiny pretraining run with the ModernBERT-style folder as data.tokenizer, the
    model's special ids set to the folder's."""
    ids = folder_ids(tokenizer_dir)
    return tiny_modernbert_config(corpus, **{
        "data.tokenizer": str(tokenizer_dir), "model.vocab_size": 640, "model.pad_token_id": ids["pad"],
        "model.cls_token_id": ids["cls"], "model.bos_token_id": ids["cls"], "model.sep_token_id": ids["sep"],
        "model.eos_token_id": ids["sep"], **overrides})


@pytest.mark.slow
def test_pretraining_with_a_modernbert_tokenizer_folder_runs_and_exports_it(corpus, tokenizer_dir, tmp_path):
    workdir = tmp_path / "work"
    train.run(modernbert_folder_config(corpus, tokenizer_dir, num_train_steps=3, log_every_steps=1,
                                       eval_every_steps=3, checkpoint_every_steps=3), str(workdir))
    assert len(losses(workdir)) == 3 and all(np.isfinite(losses(workdir)))
    assert (workdir / "tokenizer" / "tokenizer.json").read_text() == (tokenizer_dir / "tokenizer.json").read_text()
    out = export_and_verify(workdir, tmp_path / "hf", "ModernBertForMaskedLM")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"]) == (
        hf_tokenizer.pad_token_id, hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id)


# ----------------------------------------------------------------------------- pretraining


@pytest.mark.slow
def test_mesh_layouts_give_the_single_device_losses(corpus, tmp_path):
    """FSDP, and data, FSDP and tensor parallel at once: the losses of a process with one
    CPU device, within test_sharding's tolerance (which runs every layout for BERT; the
    sharding rules are shared, ModernBERT's own are its fused axis)."""
    steps = dict(num_train_steps=6, log_every_steps=1, eval_every_steps=6, checkpoint_every_steps=6)
    reference, stdout = single_device_run("tiny_modernbert_config", corpus, steps, tmp_path / "one")
    assert "over 1 cpu devices" in stdout
    for name in ("fsdp8", "dp2_fsdp2_tp2"):
        layout = LAYOUTS[name]
        train.run(tiny_modernbert_config(corpus, **steps, **layout), str(tmp_path / name))
        got = losses(tmp_path / name)
        assert len(got) == len(reference) == 6
        worst = max(abs(a - b) / abs(b) for a, b in zip(got, reference))
        assert worst < 1e-5, (name, got, reference)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(corpus, pretrained, tmp_path):
    """The CLI run killed after a random step past the first checkpoint, then the same
    command again: metrics (evaluation included) and parameters as the uninterrupted run's."""
    seed = int(os.environ.get("FLAXFT_KILL_SEED", random.randrange(2**32)))
    kill_after = random.Random(seed).randrange(RUN["checkpoint_every_steps"] + 1, RUN["num_train_steps"] - 1)
    where = f"killed after step {kill_after} (FLAXFT_KILL_SEED={seed} repeats this)"
    print(where)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "flaxft.main",
               *config_flags(tiny_modernbert_config(corpus, **RUN), "configs/pretrain_modernbert_tiny.py"),
               "--workdir", str(workdir)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: logged_step(workdir) >= kill_after and steps_on_disk(workdir), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert logged_step(workdir) < RUN["num_train_steps"], where
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, where + "\n" + resumed.stdout + resumed.stderr
    assert "resumed from step" in resumed.stdout, where
    timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in records]  # noqa: E731
    assert timeless(report.read_metrics(workdir)) == timeless(report.read_metrics(pretrained)), where
    assert [r["step"] for r in report.read_metrics(workdir) if "eval_loss" in r] == [8, 16]
    _, want = checkpoint.load_model(pretrained)
    _, got = checkpoint.load_model(workdir)
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.slow
def test_pretrained_modernbert_exports_with_its_tokenizer(pretrained, corpus, tmp_path):
    """export-hf writes a ModernBertForMaskedLM that `convert verify` passes, whose tokenizer
    transformers loads, and whose MLM logits on real text (padded) are flaxft's."""
    out = export_and_verify(pretrained, tmp_path / "hf", "ModernBertForMaskedLM")
    # transformers 5 gives every modernbert folder its generic fast tokenizer (whatever
    # tokenizer_config.json names); it encodes as the run did
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(str(pretrained / "tokenizer"))
    text, other = "The treaty was signed in Reykjavik-Nord.", "Where was the <mask> signed?"
    assert tokenizer(text, other).input_ids == ours.encode(text, other).ids
    assert tokenizer.mask_token_id == special_token_ids(ours)["mask"]
    config = json.loads((out / "config.json").read_text())
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"]) == (
        tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (1, 0, 2)
    documents = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[:4]]
    texts = [document[:length] for document, length in zip(documents, (400, 150, 60, 20))]
    batch = encode(tokenizer, [texts])
    assert batch["attention_mask"].min() == 0  # rows really are padded
    theirs, ours = both_outputs(out, pretrained, "ModernBertForMaskedLM", batch)
    real = batch["attention_mask"] > 0
    np.testing.assert_allclose(np.asarray(ours.mlm_logits)[real], theirs.logits.numpy()[real], rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- fine-tuning


@pytest.mark.slow
def test_classification_fine_tuned_from_pretraining_predicts_like_transformers(pretrained, task_files, tmp_path):
    """Sentence pairs (<s> A </s></s> B </s>), pooled at the first token: packed evaluation
    rows give the unpacked run's metrics and predictions; the export gives transformers
    flaxft's logits, labels and probabilities."""
    files = shortened(pair_and_regression_files(task_files, tmp_path)["pairs"], ("sentence1", "sentence2"), 6)
    work, _ = packed_and_unpacked(tmp_path, pretrained, "classification", files, 30, learning_rate=3e-3,
                               **{"task.text_fields": "sentence1,sentence2"})
    out = export_and_verify(work, tmp_path / "hf", "ModernBertForSequenceClassification")
    records = read_jsonl(files["validation_file"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = encode(tokenizer, [[r["sentence1"] for r in records], [r["sentence2"] for r in records]])
    theirs, ours = both_outputs(out, work, "ModernBertForSequenceClassification", batch)
    logits = theirs.logits.numpy()
    np.testing.assert_allclose(ours.logits, logits, rtol=0, atol=ATOL)
    assert_classified_as_flaxft_did(logits, read_jsonl(work / finetune.PREDICTIONS), out)


def assert_classified_as_flaxft_did(logits: np.ndarray, predictions: list[dict], out: Path) -> None:
    """transformers' `logits` pick flaxft's labels (ties aside) with its probabilities, which
    differ between examples far more than the tolerance."""
    label2id = json.loads((out / "config.json").read_text())["label2id"]
    assert_same_choices(logits, [label2id[p["prediction"]] for p in predictions])
    probabilities = torch.softmax(torch.tensor(logits), -1).max(-1).values.numpy()
    np.testing.assert_allclose(probabilities, [p["probability"] for p in predictions], rtol=0, atol=ATOL)
    assert np.ptp(probabilities) > 1e-3


@pytest.mark.slow
def test_qa_fine_tuned_from_pretraining_answers_like_transformers(pretrained, task_files, tmp_path):
    """Contexts longer than a row (128 tokens, past the 32 pretraining used: rotary
    positions), in windows overlapping by 32: transformers' best span on the export is
    flaxft's answer (ties aside)."""
    files = subset(task_files, "qa", tmp_path, 200, 40)
    records = read_jsonl(files["validation_file"])
    seq_len, stride = 128, 32
    options = {"seq_len": seq_len, "task.doc_stride": stride, "task.n_best_size": 64, "task.max_answer_length": 30}
    last = finetune_run(tmp_path / "work", pretrained, "qa", files, 10, **options)
    assert {"eval_exact_match", "eval_f1"} <= set(last)
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    out = export_and_verify(tmp_path / "work", tmp_path / "hf", "ModernBertForQuestionAnswering")
    model = transformers_model(out, "ModernBertForQuestionAnswering")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    questions = tokenizer([r["question"] for r in records], add_special_tokens=False).input_ids
    assert max(map(len, questions)) <= seq_len // 2  # flaxft cuts no question short
    windows = tokenizer([r["question"] for r in records], [r["context"] for r in records], truncation="only_second",
                        max_length=seq_len, stride=stride, return_overflowing_tokens=True)["overflow_to_sample_mapping"]
    assert len(windows) > len(records)  # some contexts are longer than a row
    for prediction, candidates in zip(ours, squad_spans(model, tokenizer, records, seq_len, stride, 30)):
        best_score, best_text = candidates[0]
        if prediction["prediction_text"] != best_text:  # only a numerical tie may differ
            ours_score = max(score for score, text in candidates if text == prediction["prediction_text"])
            assert best_score - ours_score < 1e-4, (prediction, candidates[:3])


@pytest.mark.slow
def test_mean_pooling_classification_from_a_hugging_face_folder(hf_dir, task_files, tmp_path):
    """A transformers ModernBertForMaskedLM with classifier_pooling "mean" and a ModernBERT
    tokenizer as init_from: the classifier pools the mean of each example's tokens, packed
    or not; the export (with that tokenizer) gives transformers flaxft's outputs."""
    train_file, validation_file = small_classification(task_files, tmp_path, rows=96)
    files = shortened({"train_file": train_file, "validation_file": validation_file}, ("text",), 12)
    work, _ = packed_and_unpacked(tmp_path, hf_dir, "classification", files, 8)
    out = export_and_verify(work, tmp_path / "hf", "ModernBertForSequenceClassification")
    assert json.loads((out / "config.json").read_text())["classifier_pooling"] == "mean"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.cls_token == "[CLS]" and tokenizer.pad_token_id == folder_ids(hf_dir)["pad"]
    batch = encode(tokenizer, [[r["text"] for r in read_jsonl(files["validation_file"])]])
    theirs, ours = both_outputs(out, work, "ModernBertForSequenceClassification", batch)
    logits = theirs.logits.numpy()
    np.testing.assert_allclose(ours.logits, logits, rtol=0, atol=ATOL)
    assert_classified_as_flaxft_did(logits, read_jsonl(work / finetune.PREDICTIONS), out)


@pytest.mark.slow
def test_ner_from_a_hugging_face_folder_tags_like_transformers(hf_dir, task_files, tmp_path):
    """Pre-split words through the ModernBERT tokenizer, as transformers encodes them:
    packed evaluation rows score as unpacked; transformers' scores on the export are
    flaxft's, and its best tag at each word's first sub-word is flaxft's."""
    files = subset(task_files, "ner", tmp_path, 96, 32)
    work, evaluation = packed_and_unpacked(tmp_path, hf_dir, "ner", files, 2, learning_rate=1e-5)
    ours = read_jsonl(work / finetune.PREDICTIONS)
    assert len({tag for p in ours for tag in p["predicted_tags"]}) >= 3
    out = export_and_verify(work, tmp_path / "hf", "ModernBertForTokenClassification")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    scores, chosen = first_subword_scores(transformers_model(out, "ModernBertForTokenClassification"), tokenizer,
                                          ours)
    # transformers cuts off the words flaxft could not tag (the sub-words of a space-less
    # word are many here): the same ones
    assert len(chosen) == sum(len(p["tokens"]) for p in ours) - evaluation["eval_unpredicted_words"]
    assert_same_choices(scores, chosen)
    batch = encode(tokenizer, [[p["tokens"] for p in ours]], is_split_into_words=True)
    theirs, flaxft_out = both_outputs(out, work, "ModernBertForTokenClassification", batch)
    real = batch["attention_mask"] > 0
    np.testing.assert_allclose(np.asarray(flaxft_out.logits)[real], theirs.logits.numpy()[real], rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------- conversion


@pytest.mark.slow
def test_import_and_export_round_trip_a_transformers_modernbert_bit_for_bit(hf_dir, tokenizer_dir, tmp_path):
    """`convert import-hf` then `export-hf`: every tensor bit for bit, the config's fields and
    the tokenizer as they were."""
    result = run_cli("flaxft.convert", "import-hf", hf_dir, tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    assert "wrote ModernBertForMaskedLM checkpoint" in result.stdout
    result = run_cli("flaxft.convert", "export-hf", tmp_path / "ckpt", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    original, written = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(written) == set(original)
    for key, tensor in written.items():
        assert tensor.dtype == original[key].dtype and tensor.tobytes() == original[key].tobytes(), key
    hf_config = json.loads((hf_dir / "config.json").read_text())
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in (*hf_model_config(tokenizer_dir), "layer_types", "rope_parameters", "architectures"):
        assert exported[key] == hf_config[key], key
    text = "Angela visited Reykjavik. The [MASK] was signed."
    assert (transformers.AutoTokenizer.from_pretrained(tmp_path / "out")(text).input_ids
            == transformers.AutoTokenizer.from_pretrained(hf_dir)(text).input_ids)
