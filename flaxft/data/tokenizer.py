"""Tokenizers (Hugging Face `tokenizers`) as flaxft loads and describes them: loading a
folder or file (`load_tokenizer`), special tokens by role, the layout of rows, a
tokenizer's kind, and the tokenizer files a workdir or exported model keeps. Training
and saving the tokenizers flaxft makes itself is `flaxft.data.tokenizer_training`'s job.

Roles, not spellings: the rest of flaxft asks for "cls", "sep", "pad", "unk" and "mask"
ids (`special_token_ids`) and lays rows out as the tokenizer's own post-processor does
(`row_layouts`), so BERT's [CLS] A [SEP] B [SEP] and RoBERTa's <s> A </s></s> B </s>
come out exactly as transformers' fast tokenizers build them.
"""

import dataclasses
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
# How the roles a post-processor does not show are spelt (BERT's way first).
SPELLINGS = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "mask": ("[MASK]", "<mask>")}
# Files of a tokenizer folder that name special tokens; a later one wins, as in transformers.
_LOADABLE = ("tokenizer.json", "vocab.txt", "vocab.json")  # in order of preference
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# The attribute where `load_tokenizer` keeps the special tokens a folder's files name.
_NAMED_TOKENS = "flaxft_named_special_tokens"
# Text encoded to see where the post-processor puts special tokens.
_PROBE_TEXT = "a"
# Where a Sequence pre-tokenizer or post-processor keeps its parts, in tokenizer.json.
_SEQUENCE_PARTS = ("pretokenizers", "processors")
Component = pre_tokenizers.PreTokenizer | processors.PostProcessor | None


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

    `path` is a folder holding `tokenizer.json` (used as is), `vocab.txt` (an uncased-
    or cased-per-`tokenizer_config.json` BERT WordPiece tokenizer is built around it,
    matching `transformers.BertTokenizerFast`) or `vocab.json` and `merges.txt` (RoBERTa's
    byte-level BPE, as `transformers.RobertaTokenizerFast` builds it), or one of the first
    two files itself.
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
    candidates = [target] if target.is_file() else [target / name for name in _LOADABLE]
    file = next((candidate for candidate in candidates if candidate.is_file()), None)
    if file is None or (file.name == "vocab.json" and not (target / "merges.txt").is_file()):
        hint = ("; a SentencePiece model alone is not read: AutoTokenizer.from_pretrained(folder)"
                ".save_pretrained(folder) writes its tokenizer.json"
                if any(target.glob("*.model")) else "")
        raise InputError(f"tokenizer path {path!r} has no tokenizer.json, vocab.txt or vocab.json + merges.txt{hint}")
    try:
        if file.name == "vocab.json":
            tokenizer = _byte_level_bpe_from_files(target)
        elif file.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(file))
        else:
            options = _bert_options(file.parent)
            tokenizer = with_bert_specials(bert_wordpiece(_read_vocab(file), **options))
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
    return untruncated_copy(tokenizer)


def untruncated_copy(tokenizer: Tokenizer, spec: dict | None = None) -> Tokenizer:
    """A copy of `tokenizer` (or the tokenizer `spec`, its tokenizer.json changed) with
    truncation and padding off, keeping the special tokens its folder named."""
    copy = Tokenizer.from_str(tokenizer.to_str() if spec is None else json.dumps(spec))
    copy.no_truncation()
    copy.no_padding()
    setattr(copy, _NAMED_TOKENS, getattr(tokenizer, _NAMED_TOKENS, {}))
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


def _folder_config(folder: Path) -> dict[str, tuple]:
    """`folder`'s `_CONFIG_FILES` merged (the later file wins): key -> (value, file)."""
    merged = {}
    for file in (folder / name for name in _CONFIG_FILES):
        if file.is_file():
            merged.update({k: (v, file) for k, v in json.loads(file.read_text(encoding="utf-8")).items()})
    return merged


def _token_text(value) -> str | None:
    """A special token's text from its config entry (a string or an AddedToken dict)."""
    return value.get("content") if isinstance(value, dict) else value


def _byte_level_bpe_from_files(folder: Path) -> Tokenizer:
    """The tokenizer transformers builds from a RoBERTa-style folder's `vocab.json` and
    `merges.txt` (its RobertaConverter): byte-level BPE, `add_prefix_space` and
    `trim_offsets` and the special tokens as the folder's config says (RoBERTa's by
    default; the mask token strips the space before it if its entry says lstrip, as in
    transformers 5), `<s> A </s>` / `<s> A </s></s> B </s>` rows."""
    config = {k: value for k, (value, _) in _folder_config(folder).items()}
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    tokenizer = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False))
    prefix = bool(config.get("add_prefix_space", False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    tokenizer.decoder = decoders.ByteLevel()
    token = {role: _token_text(config.get(f"{role}_token")) or default for role, default in
             (("bos", "<s>"), ("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>"), ("mask", "<mask>"),
              ("cls", "<s>"), ("sep", "</s>"))}
    mask = config.get("mask_token")  # transformers 5 strips the space before it only when told to
    lstrip = bool(mask.get("lstrip", False)) if isinstance(mask, dict) else False
    tokenizer.add_special_tokens([token[r] for r in ("bos", "pad", "eos", "unk")]
                                 + [AddedToken(token["mask"], lstrip=lstrip, special=True)])
    tokenizer.post_processor = processors.RobertaProcessing(
        (token["sep"], vocab[token["sep"]]), (token["cls"], vocab[token["cls"]]),
        trim_offsets=bool(config.get("trim_offsets", True)), add_prefix_space=prefix,
    )
    return tokenizer


def _named_special_tokens(tokenizer: Tokenizer, folder: Path) -> dict[str, str]:
    """The pad, unk and mask tokens `folder`'s `_CONFIG_FILES` name, by role.

    Raises:
        InputError: a named token is not in the vocabulary.
    """
    named = {}
    config = _folder_config(folder)
    for role in SPELLINGS:
        value, file = config.get(f"{role}_token", (None, None))
        token = _token_text(value)
        if token is None:
            continue
        if tokenizer.token_to_id(token) is None:
            raise InputError(f"{file} names {role}_token {token!r}, which is not in the vocabulary")
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
    parts = {part["type"] for part in spec_parts(component_spec(tokenizer.pre_tokenizer))}
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE" and "ByteLevel" in parts:
        return "byte_level_bpe"
    if model == "Unigram" or (model == "BPE" and "Metaspace" in parts):
        return "sentencepiece"
    return model.lower()


def component_spec(component: Component) -> dict | None:
    """The tokenizer.json entry of a pre-tokenizer or post-processor (None for none)."""
    return None if component is None else json.loads(component.__getstate__())


def spec_parts(spec: dict | None) -> list[dict]:
    """The parts of a pre-tokenizer's or post-processor's tokenizer.json entry, Sequences
    flattened; the dicts themselves, so changing one changes `spec`."""
    if spec is None:
        return []
    if spec["type"] != "Sequence":
        return [spec]
    children = [child for key in _SEQUENCE_PARTS for child in spec.get(key, [])]
    return [part for child in children for part in spec_parts(child)]


def words_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` (truncation and padding off) for words split beforehand
    (`encode(words, is_pretokenized=True)`), encoding them as transformers does with
    `is_split_into_words=True`.

    Byte-level pre-tokenizers and post-processors get `add_prefix_space`, as RoBERTa's
    tokenizer must be built for such input, so every word starts with the space marker
    "Ġ". A byte-level BPE whose post-processor is a template (ModernBERT's [CLS] A [SEP])
    is what transformers loads as its generic fast tokenizer, which encodes pre-split
    words as its pre-tokenizer does (`add_prefix_space` changes nothing there): it stays
    as it is. A Metaspace pre-tokenizer marks words by its own prepend scheme, and
    WordPiece needs no marker: those stay as they are too.
    """
    spec = json.loads(tokenizer.to_str())
    post = spec_parts(spec.get("post_processor"))
    if not any(part["type"] == "TemplateProcessing" for part in post):
        for part in spec_parts(spec.get("pre_tokenizer")) + post:
            if part["type"] in ("ByteLevel", "RobertaProcessing"):
                part["add_prefix_space"] = True
    return untruncated_copy(tokenizer, spec)


def _read_vocab(vocab_file: Path) -> dict[str, int]:
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    return {token: index for index, token in enumerate(tokens)}


def _bert_options(folder: Path) -> dict[str, bool | None]:
    """Normalizer options from `tokenizer_config.json`, with BertTokenizer's defaults."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return {
        "lowercase": config.get("do_lower_case", True),
        "strip_accents": config.get("strip_accents"),
        "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
    }


def bert_wordpiece(
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


def with_bert_specials(tokenizer: Tokenizer) -> Tokenizer:
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
