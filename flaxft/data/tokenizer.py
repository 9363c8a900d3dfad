"""Tokenizers (Hugging Face `tokenizers`): loading, training (BERT WordPiece, RoBERTa
byte-level BPE), special tokens by role, the layout of rows, and the tokenizer files a
workdir or exported model keeps.

Roles, not spellings: the rest of flaxft asks for "cls", "sep", "pad", "unk" and "mask"
ids (`special_token_ids`) and lays rows out as the tokenizer's own post-processor does
(`row_layouts`), so BERT's [CLS] A [SEP] B [SEP] and RoBERTa's <s> A </s></s> B </s>
come out exactly as transformers' fast tokenizers build them.

A folder written by `save_tokenizer` holds `tokenizer.json`, `tokenizer_config.json` and
the files of its kind (WordPiece: `vocab.txt`; byte-level BPE: `vocab.json`,
`merges.txt`, `special_tokens_map.json`), so both `load_tokenizer` and
`transformers.AutoTokenizer` read it.
"""

import collections
import dataclasses
import heapq
import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tokenizers import (
    AddedToken,
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from flaxft.errors import InputError
from flaxft.files import TOKENIZER, replaced_atomically

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
# BERT's special tokens: those of `train_wordpiece` and of a folder with only vocab.txt.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
# RoBERTa's special tokens in id order: those of `train_byte_level_bpe`.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# How the roles a post-processor does not show are spelt (BERT's way first).
SPELLINGS = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "mask": ("[MASK]", "<mask>")}
# Files of a tokenizer folder that name special tokens; a later one wins, as in transformers.
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# The attribute where `load_tokenizer` keeps the special tokens a folder's files name.
_NAMED_TOKENS = "flaxft_named_special_tokens"
# Text encoded to see where the post-processor puts special tokens.
_PROBE_TEXT = "a"
# Where a Sequence pre-tokenizer or post-processor keeps its parts, in tokenizer.json.
_SEQUENCE_PARTS = ("pretokenizers", "processors")
_Component = pre_tokenizers.PreTokenizer | processors.PostProcessor | None


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Where a tokenizer's post-processor puts special tokens around T texts (T = 1 or 2).

    specials: T + 1 tuples of ids: before the first text, between the texts (pairs
        only), after the last.
    special_types: the token type ids of `specials`, nested the same way.
    text_types: [T], the token type id of each text's tokens.
    """

    specials: tuple[tuple[int, ...], ...]
    special_types: tuple[tuple[int, ...], ...]
    text_types: tuple[int, ...]

    @property
    def num_specials(self) -> int:
        """How many special tokens one row holds."""
        return sum(map(len, self.specials))


def load_tokenizer(path: str) -> Tokenizer:
    """Loads a fast tokenizer from a Hugging Face tokenizer folder or file.

    `path` is a folder holding `tokenizer.json` (used as is) or `vocab.txt` (an uncased-
    or cased-per-`tokenizer_config.json` BERT WordPiece tokenizer is built around it,
    matching `transformers.BertTokenizerFast`), or one of those two files itself.
    Truncation and padding stored in tokenizer.json are switched off, as transformers
    does unless a call asks for them. The pad, unk and mask tokens that the folder's
    `tokenizer_config.json` / `special_tokens_map.json` name are kept with the tokenizer
    for `special_token_ids`.

    Raises:
        InputError: `path` holds neither file, a file cannot be parsed, or a special
            token a file names is not in the vocabulary.
    """
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError(f"tokenizer path {path!r} does not exist")
    candidates = [target] if target.is_file() else [target / "tokenizer.json", target / "vocab.txt"]
    file = next((candidate for candidate in candidates if candidate.is_file()), None)
    if file is None:
        raise InputError(f"tokenizer path {path!r} has no tokenizer.json or vocab.txt")
    try:
        if file.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(file))
        else:
            options = _bert_options(file.parent)
            tokenizer = _with_bert_specials(_bert_wordpiece(_read_vocab(file), **options))
        setattr(tokenizer, _NAMED_TOKENS, _named_special_tokens(tokenizer, file.parent))
    except Exception as e:  # noqa: BLE001 -- malformed files are bad input
        raise InputError(f"cannot load tokenizer from {path!r}: {e}") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` itself, or a copy with truncation and padding off if it has either
    (tasks truncate and pad themselves; the caller's tokenizer is never changed)."""
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def row_layouts(tokenizer: Tokenizer) -> tuple[RowLayout, RowLayout]:
    """The layouts of a row of one text and of a pair, read off the tokenizer's
    post-processor (`sequence_ids` and `type_ids` of a probe text encoded alone and as
    both texts of a pair), so rows built from them equal transformers' `tokenizer(a)` and
    `tokenizer(a, b)`.

    BERT: ([CLS]) A ([SEP]), and ([CLS]) A ([SEP]) B ([SEP]) with types 0 up to the
    first [SEP], 1 after it. RoBERTa and XLM-R: (<s>) A (</s>), and (<s>) A (</s> </s>)
    B (</s>), all type 0.

    Raises:
        InputError: the tokenizer encodes the probe text to no token.
    """
    plain = plain_tokenizer(tokenizer)
    single, pair = plain.encode(_PROBE_TEXT), plain.encode(_PROBE_TEXT, _PROBE_TEXT)
    if 0 not in single.sequence_ids:
        raise InputError(f"the tokenizer encodes {_PROBE_TEXT!r} to no token")
    return _layout(single), _layout(pair)


def _layout(encoding: Encoding) -> RowLayout:
    """The `RowLayout` of an encoding of one or two texts with special tokens."""
    num_texts = 1 + max(sequence for sequence in encoding.sequence_ids if sequence is not None)
    specials = [[] for _ in range(num_texts + 1)]
    special_types = [[] for _ in range(num_texts + 1)]
    text_types = [0] * num_texts
    gap = 0  # how many texts came before: specials[gap] is where a special token goes
    for token, sequence, type_id in zip(encoding.ids, encoding.sequence_ids, encoding.type_ids):
        if sequence is None:
            specials[gap].append(token)
            special_types[gap].append(type_id)
        else:
            gap = sequence + 1
            text_types[sequence] = type_id
    return RowLayout(
        tuple(map(tuple, specials)), tuple(map(tuple, special_types)), tuple(text_types)
    )


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens by role: keys "pad", "unk", "cls", "sep", "mask".

    "cls" and "sep" are the tokens the post-processor puts before and after one text
    ([CLS] and [SEP] for BERT, <s> and </s> for RoBERTa and XLM-R). "pad", "unk" and
    "mask" are the tokens the tokenizer's folder names (`load_tokenizer`), else the
    first of their `SPELLINGS` in the vocabulary, one marked special preferred.

    Raises:
        InputError: the post-processor adds no token before or after a text, or the
            vocabulary has no token for a role (naming the spellings looked for).
    """
    single, _ = row_layouts(tokenizer)
    if not single.specials[0] or not single.specials[-1]:
        raise InputError(
            "the tokenizer's post-processor adds no special token before and after a text "
            "(like [CLS] A [SEP] or <s> A </s>), so it has no cls and sep tokens"
        )
    named = getattr(tokenizer, _NAMED_TOKENS, {})
    added = tokenizer.get_added_tokens_decoder().values()
    special = {token.content for token in added if token.special}
    found, missing = {}, []
    for role, spellings in SPELLINGS.items():
        present = [named[role]] if role in named else [
            spelling for spelling in spellings if tokenizer.token_to_id(spelling) is not None
        ]
        if present:
            token = min(present, key=lambda spelling: spelling not in special)  # first special
            found[role] = tokenizer.token_to_id(token)
        else:
            missing.append(f"{role} ({' or '.join(map(repr, spellings))})")
    if missing:
        raise InputError(f"tokenizer vocabulary lacks special tokens: {', '.join(missing)}")
    return {
        "pad": found["pad"],
        "unk": found["unk"],
        "cls": single.specials[0][0],
        "sep": single.specials[-1][0],
        "mask": found["mask"],
    }


def _named_special_tokens(tokenizer: Tokenizer, folder: Path) -> dict[str, str]:
    """The pad, unk and mask tokens `folder`'s `_CONFIG_FILES` name, by role.

    Raises:
        InputError: a named token is not in the vocabulary.
    """
    named = {}
    for file in (folder / name for name in _CONFIG_FILES):
        config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        for role in SPELLINGS:
            token = config.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            if token is None:
                continue
            if tokenizer.token_to_id(token) is None:
                raise InputError(
                    f"{file} names {role}_token {token!r}, which is not in the vocabulary"
                )
            named[role] = token
    return named


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """The kind of `tokenizer`, as `Family.tokenizer` names the kind a model family's
    checkpoints come with.

    "wordpiece": a WordPiece model (BERT, ELECTRA). "byte_level_bpe": a BPE model under
    a ByteLevel pre-tokenizer (RoBERTa). "sentencepiece": a Unigram model, or a BPE model
    under a Metaspace pre-tokenizer (XLM-R). Any other: its model type in lower case
    ("bpe", "wordlevel").
    """
    model = type(tokenizer.model).__name__
    parts = {part["type"] for part in _parts(_spec(tokenizer.pre_tokenizer))}
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE" and "ByteLevel" in parts:
        return "byte_level_bpe"
    if model == "Unigram" or (model == "BPE" and "Metaspace" in parts):
        return "sentencepiece"
    return model.lower()


def _spec(component: _Component) -> dict | None:
    """The tokenizer.json entry of a pre-tokenizer or post-processor (None for none)."""
    return None if component is None else json.loads(component.__getstate__())


def _parts(spec: dict | None) -> list[dict]:
    """The parts of a pre-tokenizer's or post-processor's tokenizer.json entry, Sequences
    flattened; the dicts themselves, so changing one changes `spec`."""
    if spec is None:
        return []
    if spec["type"] != "Sequence":
        return [spec]
    children = [child for key in _SEQUENCE_PARTS for child in spec.get(key, [])]
    return [part for child in children for part in _parts(child)]


def words_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` (truncation and padding off) for words split beforehand
    (`encode(words, is_pretokenized=True)`), encoding them as transformers does with
    `is_split_into_words=True`.

    Byte-level pre-tokenizers and post-processors get `add_prefix_space`, as RoBERTa's
    tokenizer must be built for such input, so every word starts with the space marker
    "Ġ". A Metaspace pre-tokenizer marks words by its own prepend scheme, and WordPiece
    needs no marker: those stay as they are.
    """
    spec = json.loads(tokenizer.to_str())
    for part in _parts(spec.get("pre_tokenizer")) + _parts(spec.get("post_processor")):
        if part["type"] in ("ByteLevel", "RobertaProcessing"):
            part["add_prefix_space"] = True
    copy = Tokenizer.from_str(json.dumps(spec))
    copy.no_truncation()
    copy.no_padding()
    return copy


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
    splitter = _bert_wordpiece({UNK: 0}, lowercase=True)
    word_counts = collections.Counter(
        word
        for document in documents
        for word, _ in splitter.pre_tokenizer.pre_tokenize_str(
            splitter.normalizer.normalize_str(document)
        )
    )
    vocab = _learn_wordpiece_vocab(word_counts, vocab_size)
    vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    tokenizer = _with_bert_specials(
        _bert_wordpiece({token: index for index, token in enumerate(vocab)}, lowercase=True)
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


def _read_vocab(vocab_file: Path) -> dict[str, int]:
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    return {token: index for index, token in enumerate(tokens)}


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


def _bert_options(folder: Path) -> dict[str, bool | None]:
    """Normalizer options from `tokenizer_config.json`, with BertTokenizer's defaults."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return {
        "lowercase": config.get("do_lower_case", True),
        "strip_accents": config.get("strip_accents"),
        "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
    }


def _bert_wordpiece(
    vocab: dict[str, int],
    lowercase: bool,
    strip_accents: bool | None = None,
    handle_chinese_chars: bool = True,
) -> Tokenizer:
    """The tokenizer `transformers` builds for a BERT vocab (convert_slow_tokenizer)."""
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _with_bert_specials(tokenizer: Tokenizer) -> Tokenizer:
    """Marks the (existing) special tokens as such and adds the BERT post-processor:
    [CLS] A [SEP] for one sequence, [CLS] A [SEP] B [SEP] (type ids 0..0 1..1) for pairs.

    Raises:
        InputError: the vocabulary lacks one of BERT's special tokens.
    """
    missing = [token for token in SPECIAL_TOKENS.values() if tokenizer.token_to_id(token) is None]
    if missing:
        raise InputError(f"tokenizer vocabulary lacks special tokens {missing}")
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS.values()))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))],
    )
    return tokenizer


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


def _setting(component: _Component, name: str, default: bool) -> bool:
    """`name` of the first part of a pre-tokenizer or post-processor that has it, else `default`."""
    return next((part[name] for part in _parts(_spec(component)) if name in part), default)


def _role_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The special tokens by role, as tokenizer_config.json names them ("pad_token": "[PAD]")."""
    ids = special_token_ids(tokenizer)
    return {f"{role}_token": tokenizer.id_to_token(token_id) for role, token_id in ids.items()}


def _write_json(file: Path, value: dict) -> None:
    """`value` as indented JSON, as transformers writes its tokenizer files."""
    file.write_text(json.dumps(value, indent=2) + "\n")


_WRITERS = {"wordpiece": _write_wordpiece_files, "byte_level_bpe": _write_byte_level_bpe_files}


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the Hugging Face tokenizer files of `src` into `dst` (made if missing):
    those found in a folder, or, for a tokenizer file, its folder's and the file itself
    under the name `load_tokenizer` looks for (tokenizer.json, or vocab.txt). Returns
    the names written."""
    src, dst = Path(src).expanduser(), Path(dst)
    folder = src if src.is_dir() else src.parent
    copies = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    if src.is_file():
        copies["tokenizer.json" if src.suffix == ".json" else "vocab.txt"] = src
    dst.mkdir(parents=True, exist_ok=True)
    for name, path in copies.items():
        shutil.copy2(path, dst / name)
    return sorted(copies)


def write_workdir_tokenizer(workdir: Path, write: Callable[[Path], object]) -> None:
    """Fills WORKDIR/tokenizer by `write(folder)` (a folder that does not exist yet), unless
    it is there already; it appears whole or not at all."""
    folder = Path(workdir) / TOKENIZER
    if not folder.exists():
        with replaced_atomically(folder) as staging:
            write(staging)
