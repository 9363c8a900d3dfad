"""RoBERTa and XLM-RoBERTa end to end: a tiny RoBERTa pretrained with the byte-level BPE
it trains on the corpus, fine-tuned from that run and exported, after which transformers
(with the exported tokenizer) predicts what flaxft predicted; an XLM-R fine-tuned from a
Hugging Face folder with a SentencePiece tokenizer, likewise; tokenizers of the wrong
kind are refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import transformers

from flaxft import config as config_lib
from flaxft import convert, finetune, pretrain, train
from flaxft.data.tokenizer import copy_tokenizer_files
from flaxft.errors import InputError
from tests.hf_models import FAMILY_CONFIGS, save_random_hf_model
from tests.test_finetune import (
    assert_same_choices,
    export,
    first_subword_scores,
    pair_and_regression_files,
    pairs_classified_as_by_transformers,
    read_jsonl,
    subset,
)
from tests.tiny import set_dotted, tiny_config, tiny_electra_config, write_corpus
from tests.tokenizers_for_tests import roberta_style_folder, xlmr_style_folder

TINY_ROBERTA = dict(vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=66)


def roberta_pretraining_config(corpus: Path, **overrides):
    config = tiny_config(corpus, num_train_steps=20, log_every_steps=10, eval_every_steps=20,
                         checkpoint_every_steps=20)
    config.data.format = "roberta"
    config.model = config_lib.model_defaults("roberta")
    config.model.update(TINY_ROBERTA)
    return set_dotted(config, overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def roberta_run(corpus, tmp_path_factory) -> Path:
    """A tiny RoBERTa pretraining run; its byte-level BPE tokenizer is trained on the corpus."""
    workdir = tmp_path_factory.mktemp("roberta")
    train.run(roberta_pretraining_config(corpus), str(workdir))
    return workdir


def finetune_run(workdir: Path, init_from: Path, task: str, files: dict, steps: int, **overrides) -> dict:
    config = config_lib.default_config()
    config.task.update(name=task, **{k: str(v) for k, v in files.items()})
    config.update(num_train_steps=steps, global_batch_size=16, seq_len=64, learning_rate=1e-3, warmup_steps=2,
                  log_every_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps,
                  init_from=str(init_from))
    return train.run(set_dotted(config, overrides), str(workdir))


@pytest.mark.slow
def test_pretrained_roberta_exports_with_its_tokenizer(roberta_run, tmp_path):
    out = export(roberta_run, tmp_path / "hf")
    assert convert.main(["verify", str(out)]) == 0  # RobertaForMaskedLM, against transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, transformers.RobertaTokenizerFast)
    assert tokenizer("a b").input_ids[0] == 0 and tokenizer.pad_token_id == 1 == tokenizer.mask_token_id - 3


@pytest.mark.slow
def test_roberta_fine_tuned_from_pretraining_predicts_like_transformers(roberta_run, task_files, tmp_path):
    files = pair_and_regression_files(task_files, tmp_path)["pairs"]
    finetune_run(tmp_path / "work", roberta_run, "classification", files, 30, learning_rate=3e-3,
                 **{"task.text_fields": "sentence1,sentence2"})
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    out = export(tmp_path / "work", tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RobertaForSequenceClassification"]
    probabilities = pairs_classified_as_by_transformers(out, read_jsonl(files["validation_file"]), ours, 1e-6)
    assert np.ptp(probabilities) > 5e-5  # the examples' outputs differ far more than the tolerance


@pytest.mark.slow
def test_roberta_ner_tags_the_words_transformers_tags(roberta_run, task_files, tmp_path):
    """Byte-level BPE with words given pre-split: every word starts with its space marker
    (add_prefix_space), and the label sits on its first sub-word."""
    files = subset(task_files, "ner", tmp_path, 96, 32)
    finetune_run(tmp_path / "work", roberta_run, "ner", files, 2, learning_rate=1e-5)
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    out = export(tmp_path / "work", tmp_path / "hf")
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, add_prefix_space=True)
    assert_same_choices(*first_subword_scores(model, tokenizer, ours))


@pytest.mark.slow
def test_xlm_roberta_from_a_hugging_face_folder_with_a_sentencepiece_tokenizer(task_files, tmp_path):
    hf_dir = tmp_path / "xlmr"
    xlmr_style_folder(hf_dir, vocab_size=500)
    config = {**FAMILY_CONFIGS["xlm_roberta"]["gelu_new_h32"], "vocab_size": 500, "max_position_embeddings": 80}
    save_random_hf_model(hf_dir, "XLMRobertaForMaskedLM", config)
    files = subset(task_files, "ner", tmp_path, 96, 32)
    finetune_run(tmp_path / "work", hf_dir, "ner", files, 2, learning_rate=1e-5)
    ours = read_jsonl(tmp_path / "work" / finetune.PREDICTIONS)
    out = export(tmp_path / "work", tmp_path / "hf")
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "XLMRobertaForTokenClassification"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, transformers.XLMRobertaTokenizerFast)
    assert_same_choices(*first_subword_scores(model, tokenizer, ours))


def test_a_tokenizer_of_another_kind_is_refused(corpus, tmp_path, minilm_dir):
    """A RoBERTa pretrained with a WordPiece vocabulary, or MiniLM (BERT) fine-tuned with a
    byte-level BPE given as data.tokenizer: one line naming the tokenizer, its kind and the
    family's. A checkpoint's own tokenizer is not second-guessed (klue/roberta-base is a
    RoBERTa with WordPiece)."""
    config = roberta_pretraining_config(corpus, **{"data.tokenizer": str(minilm_dir)})
    config.model.vocab_size = 30522
    with pytest.raises(InputError, match=r"is a wordpiece tokenizer, but model family 'roberta' takes "
                                         r"byte_level_bpe tokenizers"):
        pretrain.setup(config, tmp_path / "work")
    bpe = roberta_style_folder(tmp_path / "bpe")
    config = config_lib.default_config()
    config.update(init_from=str(minilm_dir), num_train_steps=1)
    config.task.update(name="classification", train_file="unused.csv", validation_file="unused.csv")
    config.data.tokenizer = str(bpe)
    with pytest.raises(InputError, match=r"bpe is a byte_level_bpe tokenizer, but model family 'bert' takes "
                                         r"wordpiece tokenizers"):
        finetune.setup(config, tmp_path / "work")

    roberta_with_wordpiece = tmp_path / "klue_like"
    save_random_hf_model(roberta_with_wordpiece, "RobertaForMaskedLM",
                         {**FAMILY_CONFIGS["roberta"]["gelu_h36_pad1"], "vocab_size": 30522})
    copy_tokenizer_files(minilm_dir, roberta_with_wordpiece)
    config.init_from, config.data.tokenizer = str(roberta_with_wordpiece), ""
    with pytest.raises(InputError, match=r"unused.csv"):  # past the tokenizer, at the data
        finetune.setup(config, tmp_path / "work")


def test_pretraining_settings_a_family_cannot_use_are_refused(corpus, tmp_path):
    """Next-sentence pairs for ELECTRA (no NSP head) or RoBERTa, a discriminator weight for
    a masked-LM family: one line, nothing silently ignored."""
    electra = tiny_electra_config(corpus, **{"data.format": "bert"})
    with pytest.raises(InputError, match=r"data.format 'bert' trains next-sentence prediction, which model "
                                         r"family 'electra' has no head for"):
        pretrain.setup(electra, tmp_path / "electra")
    with pytest.raises(InputError, match=r"data.format 'bert' .* 'roberta' has no head"):
        pretrain.setup(roberta_pretraining_config(corpus, **{"data.format": "bert"}), tmp_path / "roberta")
    bert = tiny_config(corpus, **{"pretraining.discriminator_weight": 10.0})
    with pytest.raises(InputError, match=r"discriminator_weight is for replaced-token detection .* 'bert' "
                                         r"pretrains by masked_lm"):
        pretrain.setup(bert, tmp_path / "bert")
