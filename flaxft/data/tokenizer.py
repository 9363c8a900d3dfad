"""Tokenizers (Hugging Face `tokenizers`): loading, training BERT WordPiece, special ids,
and the tokenizer files a workdir or exported model keeps.

A tokenizer folder written by `train_wordpiece` holds `tokenizer.json`, `vocab.txt` and
`tokenizer_config.json`, so both `load_tokenizer` and `transformers.AutoTokenizer` read it.
"""

import collections
import heapq
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from flaxft.errors import InputError
from flaxft.files import TOKENIZER, replaced_atomically

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}


def load_tokenizer(path: str) -> Tokenizer:
    """Loads a fast tokenizer from a Hugging Face tokenizer folder or file.

    `path` is a folder holding `tokenizer.json` (used as is) or `vocab.txt` (an uncased-
    or cased-per-`tokenizer_config.json` BERT WordPiece tokenizer is built around it,
    matching `transformers.BertTokenizerFast`), or one of those two files itself.
    Truncation and padding stored in tokenizer.json are switched off, as transformers
    does unless a call asks for them.

    Raises:
        InputError: `path` holds neither file, or the file cannot be parsed.
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
    except Exception as e:  # noqa: BLE001 -- malformed files are bad input
        raise InputError(f"cannot load tokenizer from {path!r}: {e}") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


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


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the BERT special tokens: keys "pad", "unk", "cls", "sep", "mask".

    Raises:
        InputError: the vocabulary lacks one of them.
    """
    ids = {name: tokenizer.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[name] for name, token_id in ids.items() if token_id is None]
    if missing:
        raise InputError(f"tokenizer vocabulary lacks special tokens {missing}")
    return ids


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
    """
    ids = special_token_ids(tokenizer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS.values()))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, ids["cls"]), (SEP, ids["sep"])],
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike) -> None:
    """Writes a BERT WordPiece tokenizer (from `train_wordpiece`) as a folder
    `load_tokenizer` and transformers' `AutoTokenizer` read: `tokenizer.json`,
    `vocab.txt` and `tokenizer_config.json`, together (`replaced_atomically`)."""
    with replaced_atomically(out_dir) as staging:
        staging.mkdir()
        tokenizer.save(str(staging / "tokenizer.json"))
        by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        (staging / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
        config.update({f"{name}_token": token for name, token in SPECIAL_TOKENS.items()})
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


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
