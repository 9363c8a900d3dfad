"""Tokenizers of the kinds RoBERTa, XLM-R and ModernBERT ship, built with the `tokenizers`
library and saved as Hugging Face folders that `transformers.AutoTokenizer` loads (as
RobertaTokenizerFast, XLMRobertaTokenizerFast, and for ModernBERT's, as the generic fast
tokenizer its tokenizer_config.json names).

Both have <s>=0, <pad>=1, </s>=2, <unk>=3 and <mask> as the last id, as the published
checkpoints do. Their pipelines are the ones transformers itself builds for these classes
(the XLM-R one has no normalizer: transformers keeps only a SentencePiece precompiled
charsmap, which a trained Unigram model does not have), so flaxft's `load_tokenizer` and
transformers agree token for token.
"""

import json
from pathlib import Path

import transformers
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from flaxft.data.corpus import default_corpus

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3; <mask> comes last
MASK = "<mask>"
# Text the helpers train on by default: real prose, plus the words the task tests use.
TASK_WORDS = (
    "Angela Merkelization visited Reykjavik Paris. Where was the treaty signed? When? "
    "What animal? Who? The treaty was signed in Reykjavik-Nord on 12 May 1998."
)


def training_text(num_documents: int = 300) -> list[str]:
    """The first `num_documents` documents of the offline corpus and TASK_WORDS."""
    return [*default_corpus()[:num_documents], TASK_WORDS]


def roberta_style_folder(
    folder: Path,
    documents: list[str] | None = None,
    vocab_size: int = 700,
    trim_offsets: bool = True,
) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer (no prefix space, <mask> stripping the
    space before it; offsets without the space before a word unless not `trim_offsets`)
    trained on `documents` (default `training_text()`), saved in `folder`."""
    learner = _with_byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    learner.train_from_iterator(documents or training_text(), trainer)
    model = json.loads(learner.to_str())["model"]
    vocab = {**model["vocab"], MASK: len(model["vocab"])}
    merges = [tuple(pair) for pair in model["merges"]]
    tokenizer = _with_byte_level(Tokenizer(models.BPE(vocab, merges)))
    tokenizer.add_special_tokens([*SPECIALS, AddedToken(MASK, lstrip=True, special=True)])
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=trim_offsets, add_prefix_space=False
    )
    return _save(
        tokenizer, folder, "RobertaTokenizer", add_prefix_space=False, trim_offsets=trim_offsets
    )


def xlmr_style_folder(
    folder: Path, documents: list[str] | None = None, vocab_size: int = 500
) -> Path:
    """An XLM-R-style SentencePiece Unigram tokenizer (whitespace split, then "▁" before
    every word) trained on `documents` (default `training_text()`), saved in `folder`."""
    learner = Tokenizer(models.Unigram())
    learner.pre_tokenizer = _metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1, special_tokens=list(SPECIALS), unk_token="<unk>",
        show_progress=False,
    )
    learner.train_from_iterator(documents or training_text(), trainer)
    pieces = [tuple(piece) for piece in json.loads(learner.to_str())["model"]["vocab"]]
    tokenizer = Tokenizer(models.Unigram([*pieces, (MASK, 0.0)], unk_id=SPECIALS.index("<unk>")))
    tokenizer.pre_tokenizer = _metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.add_special_tokens([*SPECIALS, MASK])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return _save(tokenizer, folder, "XLMRobertaTokenizer", add_prefix_space=True)


# ModernBERT's special tokens: after the BPE vocabulary, in this order ([MASK] last, stripping
# the space before it), with GPT-NeoX's <|endoftext|> and <|padding|> as the first two ids.
MODERNBERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
NEOX_SPECIALS = ("<|endoftext|>", "<|padding|>")


def modernbert_style_folder(folder: Path, documents: list[str] | None = None, vocab_size: int = 600) -> Path:
    """A tokenizer laid out like answerdotai/ModernBERT-base's (its OLMo / GPT-NeoX byte-level
    BPE: no prefix space; <|endoftext|>=0, <|padding|>=1; [UNK] [CLS] [SEP] [PAD] [MASK]
    after the BPE vocabulary; rows [CLS] A [SEP] and [CLS] A [SEP] B [SEP], B of type 1;
    tokenizer_config.json naming the roles and PreTrainedTokenizerFast), trained on
    `documents` (default `training_text()`) to `vocab_size` ids in all, saved in `folder`."""
    learner = _with_byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MODERNBERT_SPECIALS), special_tokens=list(NEOX_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    learner.train_from_iterator(documents or training_text(), trainer)
    model = json.loads(learner.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in MODERNBERT_SPECIALS:
        vocab[token] = len(vocab)
    tokenizer = _with_byte_level(Tokenizer(models.BPE(vocab, [tuple(pair) for pair in model["merges"]])))
    tokenizer.add_special_tokens([*NEOX_SPECIALS, *MODERNBERT_SPECIALS[:-1],
                                  AddedToken("[MASK]", lstrip=True, special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    names = {f"{role}_token": f"[{role.upper()}]" for role in ("cls", "sep", "pad", "mask", "unk")}
    (folder / "special_tokens_map.json").write_text(json.dumps(names))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192, **names,
    }))
    return folder


def folder_of_kind(kind: str, folder: Path) -> Path:
    """`roberta_style_folder` ("byte_level_bpe") or `xlmr_style_folder` ("sentencepiece")."""
    builders = {"byte_level_bpe": roberta_style_folder, "sentencepiece": xlmr_style_folder}
    return builders[kind](folder)


def transformers_class(kind: str) -> type:
    """The class `transformers.AutoTokenizer` gives a folder of `folder_of_kind(kind, ...)`."""
    return {
        "byte_level_bpe": transformers.RobertaTokenizerFast,
        "sentencepiece": transformers.XLMRobertaTokenizerFast,
    }[kind]


def _with_byte_level(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with RoBERTa's byte-level pre-tokenizer (no prefix space) and decoder."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _metaspace() -> pre_tokenizers.PreTokenizer:
    """XLM-R's pre-tokenizer as transformers builds it: whitespace split, then "▁" first."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="always")]
    )


def _save(tokenizer: Tokenizer, folder: Path, tokenizer_class: str, **settings) -> Path:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    names = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
             "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": MASK}
    (folder / "special_tokens_map.json").write_text(json.dumps(names))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": tokenizer_class, **settings, **names})
    )
    return folder
