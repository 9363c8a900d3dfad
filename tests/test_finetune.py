"""Fine-tuning end to end: the real MiniLM checkpoint on a local task made from local text,
transfer beats random init, export to transformers predicts the same labels; NER and QA
runs produce their metrics and predictions; frozen parameters and layer-wise decay in
real runs."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import traverse_util

from flaxft import checkpoint, convert, finetune, loop, report, sharding, train
from flaxft import config as config_lib
from flaxft.data import load_tokenizer
from flaxft.data.tokenizer import TOKENIZER_FILES
from flaxft.errors import InputError
from flaxft.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    abstract_params,
    init_params,
)
from flaxft.tasks import classification
from tests.tiny import assert_resumes_bit_identically, set_dotted

REPO = Path(__file__).resolve().parents[1]


def small_classification(task_files: Path, folder: Path, rows: int) -> tuple[Path, Path]:
    """The first `rows` training and validation examples of the demo classification task."""
    paths = []
    for split in ("train", "validation"):
        with open(task_files / "classification" / f"{split}.csv") as f:
            records = list(csv.DictReader(f))[: rows if split == "train" else rows // 2]
        path = folder / f"{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(records)
        paths.append(path)
    return paths[0], paths[1]


def classification_config(train_file, validation_file, **overrides):
    config = config_lib.default_config()
    config.task.update(name="classification", train_file=str(train_file), validation_file=str(validation_file),
                       text_fields="text", epochs=0.0)
    config.update(num_train_steps=30, global_batch_size=16, seq_len=48, learning_rate=1e-4, warmup_steps=3,
                  log_every_steps=10, eval_every_steps=30, checkpoint_every_steps=30)
    return set_dotted(config, overrides)


@pytest.mark.slow
def test_pretrained_minilm_beats_random_init_and_exports(tmp_path, task_files, minilm_dir):
    train_file, validation_file = small_classification(task_files, tmp_path, rows=320)
    # 20 steps at 3e-4; FSDP over the 8 simulated devices (data parallel would update a
    # replicated MiniLM 8 times a step on this CPU's cores).
    short = {"num_train_steps": 20, "eval_every_steps": 20, "checkpoint_every_steps": 20, "learning_rate": 3e-4,
             "mesh.data": 1, "mesh.fsdp": -1}
    pretrained = train.run(classification_config(train_file, validation_file, init_from=str(minilm_dir), **short),
                           str(tmp_path / "pretrained"))
    hf_config = json.loads((minilm_dir / "config.json").read_text())
    same_model = {f"model.{k}": hf_config[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    # The random-init baseline only needs its accuracy: bfloat16 (auto) where that is faster.
    scratch = train.run(classification_config(train_file, validation_file, **short, **same_model,
                                              **{"data.tokenizer": str(minilm_dir), "model.dtype": "auto"}),
                        str(tmp_path / "scratch"))
    chance = 1 / 5
    assert pretrained["eval_accuracy"] > 2 * chance, pretrained
    assert pretrained["eval_accuracy"] > scratch["eval_accuracy"] + 0.1, (pretrained, scratch)
    work = tmp_path / "pretrained"
    assert json.loads((work / "eval_results.json").read_text())["eval_accuracy"] == pretrained["eval_accuracy"]

    # Export: transformers, with the exported tokenizer, predicts what flaxft predicted.
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "flaxft.convert", "export-hf", str(work), str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    with open(validation_file) as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    batch = tokenizer(texts, truncation=True, max_length=48, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    ours = [json.loads(line)["prediction"] for line in (work / finetune.PREDICTIONS).read_text().splitlines()]
    assert predicted == ours
    assert sorted(model.config.id2label.values()) == ["concurrency", "email", "gui", "numbers", "web"]


# Wide initial weights, so that a few steps leave outputs that differ between examples.
TINY_MODEL = {"model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
              "model.intermediate_size": 64, "model.initializer_range": 0.2}


def tiny_config(tokenizer_dir: Path, task: str, files: dict, steps: int, **overrides):
    """A small random model (the given tokenizer) fine-tuned on `files` for `steps` steps."""
    config = config_lib.default_config()
    config.task.update(name=task, **{k: str(v) for k, v in files.items()})
    config.update(num_train_steps=steps, global_batch_size=16, seq_len=64, learning_rate=1e-3, warmup_steps=2,
                  log_every_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps)
    config.data.tokenizer = str(tokenizer_dir)
    return set_dotted(config, {**TINY_MODEL, **overrides})


def tiny_run(workdir: Path, tokenizer_dir: Path, task: str, files: dict, steps: int, **overrides) -> dict:
    """`tiny_config`'s run in `workdir`; the last metrics."""
    return train.run(tiny_config(tokenizer_dir, task, files, steps, **overrides), str(workdir))


def export(workdir: Path, out: Path) -> Path:
    assert convert.main(["export-hf", str(workdir), str(out)]) == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pair_and_regression_files(task_files: Path, folder: Path) -> dict:
    """Two local tasks from the demo classification rows: pairs of their first 12 words
    labelled by whether both come from the same module family (half of them do), and a float score (the first text's share of
    words longer than six letters)."""
    splits = {}
    for split, size in (("train", 160), ("validation", 48)):
        with open(task_files / "classification" / f"{split}.csv") as f:
            rows = list(csv.DictReader(f))
        pairs, scores = [], []
        for i in range(size):
            a = rows[i % len(rows)]
            same = [r for r in rows if (r["label"] == a["label"]) == (i % 2 == 0) and r is not a]
            b = same[(7 * i + 3) % len(same)]  # half the pairs from one family, half from two
            pairs.append({"sentence1": " ".join(a["text"].split()[:12]), "sentence2": " ".join(b["text"].split()[:12]),
                          "label": "same" if a["label"] == b["label"] else "different"})
            words = a["text"].split()
            scores.append({"text": a["text"], "score": sum(len(w) > 6 for w in words) / max(len(words), 1)})
        splits[split] = (write_jsonl(folder / f"pairs_{split}.jsonl", pairs),
                         write_jsonl(folder / f"scores_{split}.jsonl", scores))
    return {
        "pairs": {"train_file": splits["train"][0], "validation_file": splits["validation"][0]},
        "regression": {"train_file": splits["train"][1], "validation_file": splits["validation"][1]},
    }


@pytest.mark.slow
def test_pairs_packed_and_unpacked_evaluation_agree_and_export_predicts_the_same(tmp_path, task_files, minilm_dir):
    files = pair_and_regression_files(task_files, tmp_path)["pairs"]
    options = {"task.text_fields": "sentence1,sentence2"}
    packed = tiny_run(tmp_path / "packed", minilm_dir, "classification", files, 12, **options,
                      **{"task.pack": "eval"})
    unpacked = tiny_run(tmp_path / "unpacked", minilm_dir, "classification", files, 12, **options,
                        **{"task.pack": "none"})
    features = classification.build(load_tokenizer(str(minilm_dir)), 64, text_fields="sentence1,sentence2",
                                    **{k: str(v) for k, v in files.items()}).validation
    assert (features.host["example_index"] >= 0).sum(1).max() > 1  # rows really hold several pairs
    # Training is the same (unpacked rows in both); only the evaluation rows differ.
    assert {k: v for k, v in packed.items() if k.startswith("eval_")} == {
        k: v for k, v in unpacked.items() if k.startswith("eval_")}
    ours = read_jsonl(tmp_path / "packed" / finetune.PREDICTIONS)
    theirs = read_jsonl(tmp_path / "unpacked" / finetune.PREDICTIONS)
    assert [p["prediction"] for p in ours] == [p["prediction"] for p in theirs]
    np.testing.assert_allclose([p["probability"] for p in ours], [p["probability"] for p in theirs], atol=1e-6)

    out = export(tmp_path / "packed", tmp_path / "hf")
    probabilities = pairs_classified_as_by_transformers(out, read_jsonl(files["validation_file"]), ours, 1e-5)
    assert np.ptp(probabilities) > 1e-3  # the examples really get different outputs


def pairs_classified_as_by_transformers(out: Path, records: list[dict], ours: list[dict], atol: float) -> np.ndarray:
    """transformers, loading the exported folder `out` with its tokenizer, picks flaxft's
    label for each sentence pair and gives its probability within `atol`; returns those
    probabilities."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer([r["sentence1"] for r in records], [r["sentence2"] for r in records], truncation=True,
                      max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert_same_choices(logits.numpy(), [model.config.label2id[p["prediction"]] for p in ours])
    probabilities = torch.softmax(logits, -1).max(-1).values.numpy()
    np.testing.assert_allclose(probabilities, [p["probability"] for p in ours], atol=atol)
    return probabilities


def assert_same_choices(scores: np.ndarray, chosen: list, margin: float = 1e-4) -> None:
    """transformers' best choice (last axis of `scores`) is flaxft's, except where its
    scores of both are closer than `margin` (numerical ties)."""
    scores = np.asarray(scores)
    best = scores.argmax(-1)
    ours = np.take_along_axis(scores, np.asarray(chosen)[..., None], -1)[..., 0]
    differ = best != np.asarray(chosen)
    assert not (differ & (scores.max(-1) - ours > margin)).any(), np.argwhere(differ)
    assert differ.mean() < 0.05


@pytest.mark.slow
def test_regression_end_to_end_and_export(tmp_path, task_files, minilm_dir):
    files = pair_and_regression_files(task_files, tmp_path)["regression"]
    last = tiny_run(tmp_path / "work", minilm_dir, "classification", files, 12, **{"task.label_field": "score"})
    assert {"eval_mse", "eval_pearson", "eval_spearmanr"} <= set(last)
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    # The workdir keeps the tokenizer's files, not the rest of the folder it came from.
    assert {"vocab.txt", "tokenizer.json"} <= {p.name for p in (tmp_path / "work" / "tokenizer").iterdir()}
    assert {p.name for p in (tmp_path / "work" / "tokenizer").iterdir()} <= set(TOKENIZER_FILES)
    out = export(tmp_path / "work", tmp_path / "hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    records = read_jsonl(files["validation_file"])
    batch = tokenizer([r["text"] for r in records], truncation=True, max_length=64, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(predicted, [p["prediction"] for p in ours], atol=1e-4)
    assert [p["label"] for p in ours] == pytest.approx([r["score"] for r in records])
    assert last["eval_mse"] == pytest.approx(np.mean((predicted - [r["score"] for r in records]) ** 2), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "ner"])
def test_packed_training_takes_fewer_fuller_steps(tmp_path, task_files, minilm_dir, task):
    """task.pack=all: training rows hold several examples each, so an epoch is fewer steps."""
    if task == "ner":
        files = subset(task_files, "ner", tmp_path, 96, 32)
    else:
        files = dict(zip(("train_file", "validation_file"), small_classification(task_files, tmp_path, 96)))
    last = tiny_run(tmp_path / "work", minilm_dir, task, files, 1, seq_len=128,
                    **{"task.pack": "all", "task.epochs": 1.0, "num_train_steps": 0})
    steps = json.loads((tmp_path / "work" / "config.json").read_text())["num_train_steps"]
    assert 1 <= steps <= 96 / 16 / 1.5  # batches of 16 rows, at least 1.5 examples per row
    assert np.isfinite(last["loss"]) and any(k.startswith("eval_") for k in last)


def subset(task_files: Path, task: str, folder: Path, train_rows: int, validation_rows: int) -> dict:
    files = {}
    for split, rows in (("train", train_rows), ("validation", validation_rows)):
        records = read_jsonl(task_files / task / f"{split}.jsonl")[:rows]
        files[f"{split}_file"] = write_jsonl(folder / f"{task}_{split}.jsonl", records)
    return files


@pytest.mark.slow
def test_ner_end_to_end_packed_evaluation_and_export(tmp_path, task_files, minilm_dir):
    files = subset(task_files, "ner", tmp_path, 320, 64)
    # Barely trained: the wide random head still tags words differently (a trained tiny
    # model tags everything "O" here), which makes the comparisons below telling.
    options = {"learning_rate": 1e-5, "warmup_steps": 1}
    last = tiny_run(tmp_path / "work", minilm_dir, "ner", files, 2, **options, **{"task.pack": "eval"})
    unpacked = tiny_run(tmp_path / "unpacked", minilm_dir, "ner", files, 2, **options, **{"task.pack": "none"})
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy"} <= set(last)
    assert {k: v for k, v in last.items() if k.startswith("eval_")} == {
        k: v for k, v in unpacked.items() if k.startswith("eval_")}
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    assert len({tag for p in ours for tag in p["predicted_tags"]}) >= 3

    out = export(tmp_path / "work", tmp_path / "hf")
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    scores, chosen = first_subword_scores(model, transformers.AutoTokenizer.from_pretrained(out), ours)
    assert len(chosen) == sum(len(p["tokens"]) for p in ours)  # no word cut off at this length
    assert_same_choices(scores, chosen)


def first_subword_scores(model, tokenizer, predictions: list[dict]) -> tuple[np.ndarray, list[int]]:
    """transformers' scores at each word's first sub-word, and flaxft's chosen tag ids, for
    the words that fit in a row of 64 tokens."""
    batch = tokenizer([p["tokens"] for p in predictions], is_split_into_words=True, truncation=True, max_length=64,
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    scores, chosen = [], []
    for i, prediction in enumerate(predictions):
        word_ids = batch.word_ids(i)
        firsts = [pos for pos, w in enumerate(word_ids) if w is not None and w != (word_ids[pos - 1] if pos else None)]
        scores.extend(logits[i, firsts])  # the words that fit in the row
        chosen.extend(model.config.label2id[tag] for tag in prediction["predicted_tags"][: len(firsts)])
    return np.stack(scores), chosen


def squad_spans(model, tokenizer, records: list[dict], seq_len: int, stride: int, max_answer_length: int) -> list:
    """run_qa's post-processing, every start/end pair of each window's context tokens:
    per example, [(score, answer text)] sorted best first."""
    encoded = tokenizer([r["question"] for r in records], [r["context"] for r in records],
                        truncation="only_second", max_length=seq_len, stride=stride, padding="max_length",
                        return_overflowing_tokens=True, return_offsets_mapping=True, return_tensors="pt")
    example_of = encoded.pop("overflow_to_sample_mapping").tolist()
    offsets = encoded.pop("offset_mapping").numpy()
    with torch.no_grad():
        out = model(**encoded)
    candidates = [[] for _ in records]
    for f, example in enumerate(example_of):
        context = [pos for pos, s in enumerate(encoded.sequence_ids(f)) if s == 1]
        start, end = out.start_logits[f].numpy(), out.end_logits[f].numpy()
        for a in context:
            for b in context:
                if a <= b < a + max_answer_length:
                    text = records[example]["context"][offsets[f, a, 0] : offsets[f, b, 1]]
                    candidates[example].append((float(start[a] + end[b]), text))
    return [sorted(c, reverse=True) for c in candidates]


@pytest.mark.slow
def test_qa_end_to_end_long_contexts_and_export(tmp_path, task_files, minilm_dir):
    files = subset(task_files, "qa", tmp_path, 200, 40)
    records = read_jsonl(files["validation_file"])
    options = {"task.doc_stride": 16, "task.n_best_size": 64, "task.max_answer_length": 30}
    last = tiny_run(tmp_path / "work", minilm_dir, "qa", files, 10, **options)
    assert {"eval_exact_match", "eval_f1"} <= set(last)
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    assert [p["id"] for p in ours] == [r["id"] for r in records]

    out = export(tmp_path / "work", tmp_path / "hf")
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    windows = tokenizer([r["question"] for r in records], [r["context"] for r in records], truncation="only_second",
                        max_length=64, stride=16, return_overflowing_tokens=True)["overflow_to_sample_mapping"]
    assert len(windows) > len(records)  # some contexts are longer than seq_len
    for prediction, candidates in zip(ours, squad_spans(model, tokenizer, records, 64, 16, 30)):
        best_score, best_text = candidates[0]
        if prediction["prediction_text"] != best_text:  # only a numerical tie may differ
            ours_score = max(score for score, text in candidates if text == prediction["prediction_text"])
            assert best_score - ours_score < 1e-4, (prediction, candidates[:3])


def test_fine_tuning_bad_input(tmp_path, task_files, minilm_dir):
    train_file, validation_file = small_classification(task_files, tmp_path, rows=40)
    with pytest.raises(InputError, match="task.label_field|'label2'"):
        train.run(classification_config(train_file, validation_file, init_from=str(minilm_dir),
                                        **{"task.label_field": "label2"}), str(tmp_path / "w1"))
    with pytest.raises(InputError, match="init_from"):
        train.run(classification_config(train_file, validation_file), str(tmp_path / "w2"))
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()


@pytest.mark.slow
def test_bad_fine_tuning_data_exits_2_naming_file_and_label(tmp_path, task_files, minilm_dir):
    train_file, _ = small_classification(task_files, tmp_path, rows=40)
    validation_file = tmp_path / "dev.csv"
    validation_file.write_text("text,label\nan example,no_such_family\n")
    empty_file = tmp_path / "empty.csv"
    empty_file.write_text("text,label\n")
    for train_path, validation_path, expected in (
        (train_file, validation_file, "'no_such_family'"),
        (empty_file, validation_file, str(empty_file)),
    ):
        work = tmp_path / "work"
        result = subprocess.run(
            [sys.executable, "-m", "flaxft.main", "--config", "configs/finetune_classification.py",
             "--workdir", str(work), f"--config.init_from={minilm_dir}",
             f"--config.task.train_file={train_path}", f"--config.task.validation_file={validation_path}"],
            cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
        assert str(validation_path) in lines[0] or str(train_path) in lines[0]
        assert not work.exists()


def test_fine_tuning_keeps_the_dropout_rates_config_model_leaves_unset():
    """config.model (the default config's: BERT's fields) sets the dropout rates it names,
    except classifier_dropout left at None ("unset" for BERT), which keeps the checkpoint's:
    ModernBERT's is a rate, never None."""
    from flaxft.models.bert import BertConfig
    from flaxft.models.modernbert import ModernBertConfig

    config = config_lib.default_config()
    modernbert = ModernBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=8, classifier_dropout=0.2, mlp_dropout=0.1)
    fitted = finetune.fitted_model_config(config, modernbert, 3, ("a", "b", "c"))
    assert (fitted.classifier_dropout, fitted.mlp_dropout, fitted.num_labels) == (0.2, 0.1, 3)
    bert = BertConfig(classifier_dropout=0.3, hidden_dropout_prob=0.0)
    fitted = finetune.fitted_model_config(config, bert, 2, ())
    assert (fitted.classifier_dropout, fitted.hidden_dropout_prob) == (0.3, 0.1)  # config.model's 0.1
    config.model.classifier_dropout = 0.05
    assert finetune.fitted_model_config(config, modernbert, 2, ()).classifier_dropout == 0.05


# ----------------------------------------------------------------------------- freezing, layer-wise decay


def test_new_paths_from_a_hugging_face_folder_and_a_flaxft_checkpoint(tmp_path, minilm_dir):
    """What init_from leaves to start afresh, from shapes alone, in the run's layer layout:
    MiniLM's folder (a BertModel, pooler included) lacks only the classifier; a scanned
    flaxft masked-LM checkpoint lacks the classifier and the pooler too."""
    source = finetune.source_model(str(minilm_dir))
    assert type(source).__name__ == "BertModel"
    for scan_layers in (False, True):
        model = BertForSequenceClassification(source.config.replace(num_labels=3, scan_layers=scan_layers))
        assert finetune.new_paths(source, model) == {"classifier/bias", "classifier/kernel"}
    small = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8)
    masked_lm = BertForMaskedLM(small.replace(scan_layers=True))
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract_params(masked_lm))
    checkpoint.save_model(tmp_path / "ckpt", masked_lm, zeros)
    source = finetune.source_model(str(tmp_path / "ckpt"))
    model = BertForSequenceClassification(small)
    assert finetune.new_paths(source, model) == {"classifier/bias", "classifier/kernel", "bert/pooler/bias",
                                                 "bert/pooler/kernel"}
    assert finetune.new_paths(None, model) == set(traverse_util.flatten_dict(abstract_params(model), sep="/"))


FIVE_CLASSES = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, initializer_range=0.2, num_labels=5)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, minilm_dir) -> Path:
    """A flaxft checkpoint of a random 2-layer, 32-wide BERT classifier of 5 classes with
    MiniLM's tokenizer: init_from for the runs below (every parameter provided)."""
    model = BertForSequenceClassification(FIVE_CLASSES)
    folder = tmp_path_factory.mktemp("tiny_source") / "ckpt"
    params = jax.jit(lambda: nn.meta.unbox(init_params(model, jax.random.key(7))))()
    checkpoint.save_model(folder, model, params, source_dir=str(minilm_dir))
    return folder


def _first_step(config, workdir: Path) -> tuple[dict, dict, dict]:
    """A fine-tuning run's parameters before and after its first step, and its metrics."""
    run = finetune.setup(config, workdir)
    try:
        with sharding.activated(run.mesh, run.rules):
            rng, seq_len = jax.random.key(config.seed), run.config.seq_len
            shardings, _ = loop.abstract_state(run.model, run.tx, run.mesh, run.rules, rng, seq_len, run.trainable)
            state = loop.init_train_state(run.model, run.tx, rng, seq_len, shardings, run.init_params(), run.trainable)
            before = jax.device_get(state.params)
            batches = sharding.batch_sharding(run.mesh)
            step = loop.jit_train_step(run.config, run.model, run.tx, run.task, shardings, batches, run.trainable,
                                       run.learning_rate_groups)
            batch = {k: jax.make_array_from_process_local_data(batches, v)
                     for k, v in run.train_loader.get_batch(0).items()}
            state, metrics = step(state, batch)
            return before, jax.device_get(state.params), jax.device_get(metrics)
    finally:
        run.train_loader.close()


@pytest.mark.slow
def test_layerwise_decay_scales_each_groups_first_step_in_a_real_run(tmp_path, task_files, tiny_source):
    """The first step of a fine-tuning run (scanned layers) with layerwise_lr_decay 0.5 moves
    each parameter by its multiplier (0.5^(L+2-depth): embeddings 1/16, layer 1 1/8, layer 2
    1/4, pooler 1/2, classifier 1) times what the same step moves it without decay, to the
    rounding of the parameter; the logged rates say so."""
    train_file, validation_file = small_classification(task_files, tmp_path, rows=64)
    common = dict(init_from=str(tiny_source), warmup_steps=0, learning_rate=1e-3, **{"model.scan_layers": True})
    plain_before, plain_after, plain_metrics = _first_step(
        classification_config(train_file, validation_file, **common), tmp_path / "plain")
    before, after, metrics = _first_step(
        classification_config(train_file, validation_file, layerwise_lr_decay=0.5, **common), tmp_path / "decayed")
    assert metrics["learning_rate"] == plain_metrics["learning_rate"] == np.float32(1e-3)
    assert metrics["learning_rate_embeddings"] == np.float32(1e-3 / 16) and "learning_rate_embeddings" not in plain_metrics
    jax.tree.map(np.testing.assert_array_equal, before, plain_before)
    multipliers = {"bert/embeddings": 1 / 16, "bert/encoder/layers": np.array([1 / 8, 1 / 4]), "bert/pooler": 1 / 2,
                   "classifier": 1.0}
    flat = [traverse_util.flatten_dict(tree, sep="/") for tree in (before, after, plain_after)]
    for path, start in flat[0].items():
        multiplier = next(m for prefix, m in multipliers.items() if path.startswith(prefix + "/"))
        multiplier = np.reshape(multiplier, np.shape(multiplier) + (1,) * (start.ndim - np.ndim(multiplier)))
        moved, plain_moved = flat[1][path] - start, flat[2][path] - start
        assert np.abs(plain_moved).max() > 0, path
        np.testing.assert_allclose(moved, multiplier * plain_moved, rtol=0, atol=np.spacing(np.abs(start).max()),
                                   err_msg=path)


@pytest.mark.slow
def test_frozen_parameters_stay_put_hold_no_optimizer_state_and_resume_bit_identically(
        tmp_path, task_files, tiny_source, capsys):
    """Fine-tuning on an FSDP mesh with the embeddings and layer 0 frozen (and layer-wise
    decay): those parameters end bit for bit as init_from had them and have no optimizer
    state in the Orbax checkpoint; every other parameter moved; the start-up line counts
    what trains; a run resumed from the middle checkpoint ends bit-identical."""
    train_file, validation_file = small_classification(task_files, tmp_path, rows=64)
    frozen = "embeddings/|layer_0/"
    config = classification_config(train_file, validation_file, init_from=str(tiny_source), freeze=frozen,
                                   layerwise_lr_decay=0.8, num_train_steps=4, checkpoint_every_steps=2,
                                   eval_every_steps=4, log_every_steps=1,
                                   **{"mesh.data": 1, "mesh.fsdp": 8, "checkpoint.keep": 5})
    train.run(config, str(tmp_path / "run"))
    source = traverse_util.flatten_dict(checkpoint.load_model(tiny_source)[1], sep="/")
    final = traverse_util.flatten_dict(checkpoint.load_model(tmp_path / "run")[1], sep="/")
    held = {path for path in source if re.search(frozen, path)}
    assert held and len(held) < len(source)
    for path, value in final.items():
        if path in held:
            np.testing.assert_array_equal(value, source[path], err_msg=path)
        else:
            assert np.any(value != source[path]), path
    metadata = ocp.StandardCheckpointer().metadata(tmp_path / "run" / "checkpoints" / "4" / "train_state")
    moments = metadata.item_metadata.tree["opt_state"]
    for moment in ("mu", "nu"):
        assert set(traverse_util.flatten_dict(moments[moment], sep="/")) == set(source) - held
    trains = sum(source[path].size for path in source if path not in held)
    total = sum(leaf.size for leaf in source.values())
    assert f"{trains:,} of {total:,} parameters train ({trains / total:.1%})" in capsys.readouterr().out
    records = [r for r in report.read_metrics(tmp_path / "run") if "loss" in r]
    assert all(r["learning_rate_embeddings"] == pytest.approx(r["learning_rate"] * 0.8**4) for r in records)

    assert_resumes_bit_identically(config, tmp_path / "run", tmp_path / "resumed", from_step_removed=4)

    # Resuming with another freeze: an InputError saying so, the checkpoint kept (even with fallback).
    shutil.copytree(tmp_path / "run", tmp_path / "changed")
    shutil.rmtree(tmp_path / "changed" / "checkpoints" / "4")
    set_dotted(config, {"freeze": "embeddings/", "num_train_steps": 6, "checkpoint.fallback": True})
    with pytest.raises(InputError, match=r"checkpoints/2: its optimizer state is not this run's \(opt_state/mu/bert/"
                                         r"encoder/layer_0/.* is only in this run\): what trains or the optimizer"):
        train.run(config, str(tmp_path / "changed"))
    assert (tmp_path / "changed" / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_packed_fine_tuning_resumes_bit_identically(tmp_path, task_files, minilm_dir):
    """task.pack="batches" on 8 devices: a run resumed from its step-3 checkpoint ends as the
    uninterrupted run did (the batches, their row count and the dropout draws are functions
    of the step)."""
    files = dict(zip(("train_file", "validation_file"), small_classification(task_files, tmp_path, 64)))
    config = tiny_config(minilm_dir, "classification", files, 6, log_every_steps=1, checkpoint_every_steps=3,
                         seq_len=48)
    train.run(config, str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task"]["pack"] == "batches"
    assert_resumes_bit_identically(config, tmp_path / "run", tmp_path / "resumed", from_step_removed=6)


@pytest.mark.slow
def test_packed_fine_tuning_on_8_devices_matches_one_device(tmp_path, task_files, minilm_dir):
    """The same packed steps on a mesh of 8 devices (rows rounded up to a multiple of 8,
    the fillers weighing nothing) and on one device (no filler needed), dropout off: the
    same losses and predictions up to float rounding."""
    from flaxft import report

    files = dict(zip(("train_file", "validation_file"), small_classification(task_files, tmp_path, 64)))
    options = {"log_every_steps": 1, "seq_len": 48, "model.hidden_dropout_prob": 0.0,
               "model.attention_probs_dropout_prob": 0.0}
    tiny_run(tmp_path / "mesh", minilm_dir, "classification", files, 4, **options)
    script = (f"from pathlib import Path; from tests.test_finetune import tiny_run; "
              f"tiny_run(Path({str(tmp_path / 'one')!r}), Path({str(minilm_dir)!r}), 'classification', "
              f"{ {k: str(v) for k, v in files.items()}!r}, 4, **{options!r})")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "over 1 cpu devices" in result.stdout

    def losses(work):
        return [r["loss"] for r in report.read_metrics(work) if "loss" in r]

    np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "mesh"), rtol=1e-5)
    predictions = [read_jsonl(tmp_path / w / finetune.PREDICTIONS) for w in ("one", "mesh")]
    assert [p["prediction"] for p in predictions[0]] == [p["prediction"] for p in predictions[1]]
