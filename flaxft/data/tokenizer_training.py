"""Training and saving the tokenizers flaxft makes itself (Hugging Face `tokenizers`):
BERT WordPiece (`train_wordpiece`, with its own deterministic vocabulary learning) and
RoBERTa byte-level BPE (`train_byte_level_bpe`), written by `save_tokenizer`.

A folder written by `save_tokenizer` holds `tokenizer.json`, `tokenizer_config.json` and
the files of its kind (WordPiece: `vocab.txt`; byte-level BPE: `vocab.json`,
`merges.txt`, `special_tokens_map.json`), so both `load_tokenizer` and
`transformers.AutoTokenizer` read it.
"""

import collections
import heapq
import itertools
import json
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from flaxft.data.tokenizer import (
    SPECIAL_TOKENS,
    UNK,
    Component,
    bert_wordpiece,
    component_spec,
    spec_parts,
    special_token_ids,
    tokenizer_kind,
    with_bert_specials,
)
from flaxft.errors import InputError
from flaxft.files import replaced_atomically

# RoBERTa's special tokens in id order: those of `train_byte_level_bpe`.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_wordpiece(documents: list[str], vocab_size: int, out_dir: str | None = None) -> Tokenizer:
    """Trains an uncased BERT WordPiece tokenizer on `documents` (and saves it to
    `out_dir` with `save_tokenizer` when given).

    The vocabulary is learnt like `tokenizers.trainers.WordPieceTrainer` learns it (BPE
    merges over words split into characters, continuations prefixed "##"), but ties
    between equally frequent pairs are broken by the pairs' text, not by hash order, so
    the same documents always give the same vocabulary. Ids: [PAD]=0, [UNK]=1, [CLS]=2,
    [SEP]=3, [MASK]=4, then the characters seen (sorted), then merged pieces in merge
    order. If the characters alone exceed `vocab_size`, all are kept; if every word is
    whole before `vocab_size` is reached (the default corpus tops out at 12,797 pieces on
    Python 3.11), the rest is filled with reserved `[unusedN]` tokens, as BERT's own
    vocabularies are, so the size is exactly `vocab_size`. Counting and merging run in
    Python: seconds for the default corpus, but slow for gigabytes of text (train on a
    sample, or reuse a published vocab).

    Returns:
        The trained tokenizer (equal to `load_tokenizer(out_dir)` when saved).
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise InputError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    splitter = bert_wordpiece({UNK: 0}, lowercase=True)
    word_counts = collections.Counter(
        word
        for document in documents
        for word, _ in splitter.pre_tokenizer.pre_tokenize_str(
            splitter.normalizer.normalize_str(document)
        )
    )
    vocab = _learn_wordpiece_vocab(word_counts, vocab_size)
    vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    tokenizer = with_bert_specials(
        bert_wordpiece({token: index for index, token in enumerate(vocab)}, lowercase=True)
    )
    if out_dir is not None:
        save_tokenizer(tokenizer, out_dir)
    return tokenizer


def train_byte_level_bpe(
    documents: list[str], vocab_size: int, out_dir: str | None = None
) -> Tokenizer:
    """Trains a RoBERTa byte-level BPE tokenizer on `documents` (and saves it to
    `out_dir` with `save_tokenizer` when given).

    GPT-2's byte-level pre-tokenization (no prefix space) and merges learnt by
    `tokenizers.trainers.BpeTrainer`: the most frequent pair first, ties broken by the
    pair's ids, so the same documents give the same vocabulary in every process. Ids:
    <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4, then the bytes' symbols, then merged
    pieces in merge order. If no pair is left before `vocab_size` is reached, reserved
    `<unusedN>` tokens (never produced from text) fill the rest, so the size is exactly
    `vocab_size`. Rows: <s> A </s>, and <s> A </s></s> B </s> (RoBERTa's post-processor).

    Returns:
        The trained tokenizer (equal to `load_tokenizer(out_dir)` when saved).

    Raises:
        InputError: `vocab_size` leaves no room for the special tokens and every byte.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(ROBERTA_SPECIAL_TOKENS) + len(alphabet)
    if vocab_size < minimum:
        raise InputError(
            f"vocab_size must be at least {minimum} for byte-level BPE (special tokens and "
            f"every byte), got {vocab_size}"
        )
    learner = _byte_level_bpe(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(ROBERTA_SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    learner.train_from_iterator(documents, trainer)
    learnt = json.loads(learner.to_str())["model"]
    vocab = learnt["vocab"]
    for reserved in (f"<unused{i}>" for i in itertools.count()):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(reserved, len(vocab))
    tokenizer = _byte_level_bpe(models.BPE(vocab, [tuple(pair) for pair in learnt["merges"]]))
    bos, _, eos, _, mask = ROBERTA_SPECIAL_TOKENS
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, lstrip=token == mask) for token in ROBERTA_SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)), trim_offsets=True,
        add_prefix_space=False,
    )
    if out_dir is not None:
        save_tokenizer(tokenizer, out_dir)
    return tokenizer


def _byte_level_bpe(model: models.BPE) -> Tokenizer:
    """A tokenizer around `model` with RoBERTa's byte-level pre-tokenizer and decoder."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _learn_wordpiece_vocab(word_counts: collections.Counter, vocab_size: int) -> list[str]:
    """The vocabulary (special tokens first) from greedy BPE merges over `word_counts`.

    Each step merges the most frequent adjacent pair of pieces (ties: smallest pair text)
    in every word, adding the merged piece, until `vocab_size` pieces exist or no pair
    is left. Pair counts are updated incrementally, only for the words that changed.
    The heap's entries are totally ordered, so the result does not depend on set order.
    """
    words = sorted(word_counts)
    counts = [word_counts[word] for word in words]
    pieces = [[word[0], *(f"##{char}" for char in word[1:])] for word in words]
    vocab = [*SPECIAL_TOKENS.values(), *sorted({piece for word in pieces for piece in word})]
    known = set(vocab)
    pair_counts: collections.Counter = collections.Counter()
    pair_words = collections.defaultdict(set)  # pair -> indices of words that held it
    for index, word in enumerate(pieces):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[index]
            pair_words[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale entry: this pair's count changed since it was pushed
        merged = pair[0] + pair[1].removeprefix("##")
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed = set()
        for index in pair_words.pop(pair):
            old, new = pieces[index], _merge_pair(pieces[index], pair, merged)
            for old_pair in zip(old, old[1:]):
                pair_counts[old_pair] -= counts[index]
                changed.add(old_pair)
            for new_pair in zip(new, new[1:]):
                pair_counts[new_pair] += counts[index]
                pair_words[new_pair].add(index)
                changed.add(new_pair)
            pieces[index] = new
        for changed_pair in changed:
            if pair_counts[changed_pair] > 0:
                heapq.heappush(heap, (-pair_counts[changed_pair], changed_pair))
            else:
                del pair_counts[changed_pair]
    return vocab


def _merge_pair(word: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    """`word` with every non-overlapping occurrence of `pair` (left to right) replaced."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike) -> None:
    """Writes a WordPiece tokenizer (from `train_wordpiece`) or a byte-level BPE one (from
    `train_byte_level_bpe`) as a folder `load_tokenizer` and transformers' `AutoTokenizer`
    read: `tokenizer.json`, `tokenizer_config.json` and the files of its kind (WordPiece:
    `vocab.txt`, as BertTokenizer; byte-level BPE: `vocab.json`, `merges.txt`,
    `special_tokens_map.json`, as RobertaTokenizer), together (`replaced_atomically`).

    Raises:
        ValueError: a tokenizer of another kind.
    """
    kind = tokenizer_kind(tokenizer)
    if kind not in _WRITERS:
        raise ValueError(f"save_tokenizer writes {sorted(_WRITERS)} tokenizers, not {kind}")
    with replaced_atomically(out_dir) as staging:
        staging.mkdir()
        tokenizer.save(str(staging / "tokenizer.json"))
        _WRITERS[kind](tokenizer, staging)


def _write_wordpiece_files(tokenizer: Tokenizer, folder: Path) -> None:
    """vocab.txt and an uncased BertTokenizer's tokenizer_config.json."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, **_role_tokens(tokenizer)}
    _write_json(folder / "tokenizer_config.json", config)


def _write_byte_level_bpe_files(tokenizer: Tokenizer, folder: Path) -> None:
    """vocab.json, merges.txt, special_tokens_map.json and a RobertaTokenizer's
    tokenizer_config.json: add_prefix_space as the pre-tokenizer has it, trim_offsets as
    the post-processor has it."""
    tokenizer.model.save(str(folder))
    roles = _role_tokens(tokenizer)
    tokens = {"bos_token": roles["cls_token"], "eos_token": roles["sep_token"], **roles}
    settings = {
        "add_prefix_space": _setting(tokenizer.pre_tokenizer, "add_prefix_space", False),
        "trim_offsets": _setting(tokenizer.post_processor, "trim_offsets", True),
    }
    _write_json(folder / "special_tokens_map.json", tokens)
    config = {"tokenizer_class": "RobertaTokenizer", **settings, **tokens}
    _write_json(folder / "tokenizer_config.json", config)


def _setting(component: Component, name: str, default: bool) -> bool:
    """`name` of the first part of a pre-tokenizer or post-processor that has it, else `default`."""
    return next((part[name] for part in spec_parts(component_spec(component)) if name in part), default)


def _role_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The special tokens by role, as tokenizer_config.json names them ("pad_token": "[PAD]")."""
    ids = special_token_ids(tokenizer)
    return {f"{role}_token": tokenizer.id_to_token(token_id) for role, token_id in ids.items()}


def _write_json(file: Path, value: dict) -> None:
    """`value` as indented JSON, as transformers writes its tokenizer files."""
    file.write_text(json.dumps(value, indent=2) + "\n")


_WRITERS = {"wordpiece": _write_wordpiece_files, "byte_level_bpe": _write_byte_level_bpe_files}
