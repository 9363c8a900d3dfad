"""Fine-tuning end to end: the real MiniLM checkpoint on a local task made from local text,
transfer beats random init, export to transformers predicts the same labels; NER and QA
runs produce their metrics and predictions."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from flaxft import config as config_lib
from flaxft import finetune, train
from flaxft.errors import InputError
from flaxft.tasks import demo_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finetune_data")
    demo_data.make_demo_data(folder)
    return folder


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
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


@pytest.mark.slow
def test_pretrained_minilm_beats_random_init_and_exports(tmp_path, task_files, minilm_dir):
    train_file, validation_file = small_classification(task_files, tmp_path, rows=320)
    pretrained = train.run(classification_config(train_file, validation_file, init_from=str(minilm_dir)),
                           str(tmp_path / "pretrained"))
    hf_config = json.loads((minilm_dir / "config.json").read_text())
    same_model = {f"model.{k}": hf_config[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    scratch = train.run(classification_config(train_file, validation_file, **same_model,
                                              **{"data.tokenizer": str(minilm_dir)}), str(tmp_path / "scratch"))
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


@pytest.mark.parametrize("task, metric", [("ner", "eval_f1"), ("qa", "eval_exact_match")])
def test_ner_and_qa_runs_write_metrics_and_predictions(tmp_path, task_files, minilm_dir, task, metric):
    """A tiny random model (MiniLM's tokenizer) through the whole fine-tuning path."""
    suffix = "jsonl"
    config = config_lib.default_config()
    config.task.update(name=task, train_file=str(task_files / task / f"train.{suffix}"),
                       validation_file=str(task_files / task / f"validation.{suffix}"), doc_stride=16)
    config.update(num_train_steps=2, global_batch_size=8, seq_len=64, log_every_steps=1, eval_every_steps=2,
                  checkpoint_every_steps=2)
    config.data.tokenizer = str(minilm_dir)
    config.model.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    last = train.run(config, str(tmp_path))
    assert metric in last
    results = json.loads((tmp_path / finetune.EVAL_RESULTS).read_text())
    assert metric in results
    assert (tmp_path / finetune.PREDICTIONS).read_text().count("\n") > 10
    assert (tmp_path / "tokenizer" / "vocab.txt").is_file()


def test_fine_tuning_bad_input(tmp_path, task_files, minilm_dir):
    train_file, validation_file = small_classification(task_files, tmp_path, rows=40)
    with pytest.raises(InputError, match="task.label_field|'label2'"):
        train.run(classification_config(train_file, validation_file, init_from=str(minilm_dir),
                                        **{"task.label_field": "label2"}), str(tmp_path / "w1"))
    with pytest.raises(InputError, match="init_from"):
        train.run(classification_config(train_file, validation_file), str(tmp_path / "w2"))
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()
