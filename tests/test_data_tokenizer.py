"""Tokenizers: loading (tokenizer.json or vocab.txt), training (WordPiece, byte-level BPE),
special tokens by role and row layouts, checked against transformers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from flaxft.data.corpus import default_corpus
from flaxft.data.features import RowTemplate, truncate_pair
from flaxft.data.tokenizer import load_tokenizer, plain_tokenizer, special_token_ids, tokenizer_kind, words_tokenizer
from flaxft.data.tokenizer_training import save_tokenizer, train_byte_level_bpe, train_wordpiece
from flaxft.errors import InputError
from tests.tokenizers_for_tests import roberta_style_folder, transformers_class

SENTENCES = [
    "The quick brown fox's unaffordable jump-start costs $3.50!",
    "Héllo, Wörld: naïve café owners [MASK] re-tokenize 東京 text.",
    "Return a new dictionary initialized from an optional positional argument.",
]


def hf_ids(folder, text):
    return transformers.AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]


@pytest.fixture(scope="module")
def small_corpus():
    return default_corpus()[:300]


def test_tokenizer_json_matches_transformers(minilm_dir):
    tokenizer = load_tokenizer(str(minilm_dir))
    for text in SENTENCES:
        assert tokenizer.encode(text).ids == hf_ids(minilm_dir, text)
    assert load_tokenizer(str(minilm_dir / "tokenizer.json")).to_str() == tokenizer.to_str()


def test_vocab_txt_alone_matches_transformers(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.get_vocab_size() == 30522
    for text in SENTENCES:
        assert tokenizer.encode(text).ids == hf_ids(minilm_dir, text)
    pair = tokenizer.encode(SENTENCES[0], SENTENCES[1])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    hf_pair = hf_tokenizer(SENTENCES[0], SENTENCES[1])
    assert pair.ids == hf_pair["input_ids"]
    assert pair.type_ids == hf_pair["token_type_ids"]
    assert load_tokenizer(str(tmp_path / "vocab.txt")).to_str() == tokenizer.to_str()


def test_vocab_txt_honours_do_lower_case(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert load_tokenizer(str(tmp_path)).encode("Hello").tokens == ["[CLS]", "[UNK]", "[SEP]"]


def test_special_token_ids(minilm_dir, tmp_path):
    assert special_token_ids(load_tokenizer(str(minilm_dir))) == {
        "pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103
    }
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(InputError, match=rf"{tmp_path}.*\[MASK\]"):
        load_tokenizer(str(tmp_path))


def test_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(InputError, match="no-tokenizer-here"):
        load_tokenizer(str(tmp_path / "no-tokenizer-here"))
    with pytest.raises(InputError, match="no tokenizer.json, vocab.txt or vocab.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path))


def test_train_wordpiece_loads_in_transformers(small_corpus, tmp_path):
    out_dir = tmp_path / "tokenizer"
    tokenizer = train_wordpiece(small_corpus, 600, str(out_dir))
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]  # no staging leftovers
    assert tokenizer.get_vocab_size() == 600
    assert special_token_ids(tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert isinstance(hf_tokenizer, transformers.BertTokenizerFast)
    for text in SENTENCES:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    assert load_tokenizer(str(out_dir)).to_str() == tokenizer.to_str()
    shutil.move(out_dir / "tokenizer.json", tmp_path / "moved.json")  # vocab.txt path too
    from_vocab = load_tokenizer(str(out_dir))
    assert from_vocab.encode(SENTENCES[2]).ids == tokenizer.encode(SENTENCES[2]).ids


def test_train_wordpiece_is_deterministic_and_replaces_out_dir(small_corpus, tmp_path):
    first = train_wordpiece(small_corpus, 800, str(tmp_path / "a"))
    (tmp_path / "docs.json").write_text(json.dumps(small_corpus))
    program = (  # another process, other hash seed: other set and dict orders
        "import json, sys; from flaxft.data.tokenizer_training import train_wordpiece; "
        "train_wordpiece(json.load(open(sys.argv[1])), 800, sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "docs.json"), str(tmp_path / "b")],
        env=dict(os.environ, PYTHONHASHSEED="987"), check=True,
    )
    (tmp_path / "docs.json").unlink()
    assert (tmp_path / "a" / "vocab.txt").read_text() == (tmp_path / "b" / "vocab.txt").read_text()
    assert first.to_str() == load_tokenizer(str(tmp_path / "b")).to_str()
    train_wordpiece(small_corpus[:50], 300, str(tmp_path / "a"))
    assert len((tmp_path / "a" / "vocab.txt").read_text().splitlines()) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_small_corpus_vocab_is_padded_with_reserved_tokens(tmp_path):
    tokenizer = train_wordpiece(["a tiny corpus with few words", "few words indeed"], 200, str(tmp_path / "tok"))
    assert tokenizer.get_vocab_size() == 200
    vocab = (tmp_path / "tok" / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 200 and vocab[-1].startswith("[unused") and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "[unused3]" not in tokenizer.encode("tiny [unused3] words").tokens  # text never maps to them


def test_copy_tokenizer_files_from_a_folder_or_a_file(tmp_path):
    from flaxft.data.tokenizer import copy_tokenizer_files
    from flaxft.data.tokenizer_training import save_tokenizer

    tokenizer = train_wordpiece(["a few words to learn from, and a few more words"], 40)
    save_tokenizer(tokenizer, tmp_path / "folder")
    assert copy_tokenizer_files(tmp_path / "folder", tmp_path / "a") == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    odd = tmp_path / "elsewhere" / "my_tokenizer.json"  # a file under a name of its own
    odd.parent.mkdir()
    tokenizer.save(str(odd))
    assert copy_tokenizer_files(odd, tmp_path / "b") == ["tokenizer.json"]
    assert load_tokenizer(str(tmp_path / "b")).to_str() == tokenizer.to_str()


# ----------------------------------------------------------------------------- other kinds


def test_roberta_and_xlmr_special_tokens_by_role(roberta_or_xlmr_dir):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(roberta_or_xlmr_dir))
    assert isinstance(hf_tokenizer, transformers_class(roberta_or_xlmr_dir.name))
    tokenizer = load_tokenizer(str(roberta_or_xlmr_dir))
    assert tokenizer_kind(tokenizer) == roberta_or_xlmr_dir.name
    ids = special_token_ids(tokenizer)
    assert ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": tokenizer.get_vocab_size() - 1}
    assert ids == {role: getattr(hf_tokenizer, f"{role}_token_id") for role in ids}


@pytest.mark.parametrize(
    "texts", [(SENTENCES[0],), (SENTENCES[0], SENTENCES[2]), ("Short.", "And another.")]
)
@pytest.mark.parametrize("seq_len", [16, 40])
def test_rows_match_transformers(roberta_or_xlmr_dir, texts, seq_len):
    """RowTemplate rows (RoBERTa: <s> A </s></s> B </s>, all type 0) equal transformers',
    truncated longest-first and padded."""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(roberta_or_xlmr_dir))
    tokenizer = load_tokenizer(str(roberta_or_xlmr_dir))
    template = RowTemplate.of(tokenizer, seq_len)
    options = {"truncation": "longest_first", "max_length": seq_len}
    expected = hf_tokenizer(*texts, padding="max_length", return_token_type_ids=True, **options)
    parts = [tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
    budget = template.budget(len(texts) == 2)
    if len(parts) == 2:
        lengths = truncate_pair(*map(len, parts), budget)
    else:
        lengths = [min(len(parts[0]), budget)]
    ids, types, length = template.row(*(part[:n] for part, n in zip(parts, lengths)))
    assert ids == expected["input_ids"]
    assert types == expected["token_type_ids"]
    assert length == sum(expected["attention_mask"])
    sequence_ids = hf_tokenizer(*texts, **options).sequence_ids()
    assert template.text_starts(*lengths) == [sequence_ids.index(i) for i in range(len(texts))]


def test_special_tokens_named_by_the_folder(roberta_or_xlmr_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(roberta_or_xlmr_dir, folder)
    tokenizer = load_tokenizer(str(folder))
    tokenizer.add_special_tokens(["<|masked|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    names = json.loads((folder / "special_tokens_map.json").read_text())
    (folder / "special_tokens_map.json").write_text(json.dumps({**names, "mask_token": "<|masked|>"}))
    tokenizer = load_tokenizer(str(folder))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert special_token_ids(tokenizer)["mask"] == tokenizer.token_to_id("<|masked|>")
    assert special_token_ids(tokenizer)["mask"] == hf_tokenizer.mask_token_id
    tokenizer.enable_truncation(16)  # the copies tasks make keep the folder's names
    for copy in (plain_tokenizer(tokenizer), words_tokenizer(tokenizer)):
        assert special_token_ids(copy) == special_token_ids(tokenizer)
    (folder / "special_tokens_map.json").write_text(json.dumps({**names, "pad_token": "<nowhere>"}))
    with pytest.raises(InputError, match=r"special_tokens_map.json names pad_token '<nowhere>'"):
        load_tokenizer(str(folder))


def test_missing_roles_are_named():
    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(InputError, match="no special token before and after a text"):
        special_token_ids(tokenizer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    missing = r"unk \('\[UNK\]' or '<unk>'\), mask \('\[MASK\]' or '<mask>'\)"
    with pytest.raises(InputError, match=missing):
        special_token_ids(tokenizer)
    assert tokenizer_kind(tokenizer) == "wordlevel"


def test_tokenizer_kinds(minilm_dir):
    assert tokenizer_kind(load_tokenizer(str(minilm_dir))) == "wordpiece"
    assert tokenizer_kind(train_wordpiece(["a few words"], 40)) == "wordpiece"
    assert tokenizer_kind(train_byte_level_bpe(["a few words"], 300)) == "byte_level_bpe"
    sentencepiece_bpe = Tokenizer(models.BPE())
    sentencepiece_bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    assert tokenizer_kind(sentencepiece_bpe) == "sentencepiece"
    assert tokenizer_kind(Tokenizer(models.Unigram())) == "sentencepiece"
    assert tokenizer_kind(Tokenizer(models.BPE())) == "bpe"


# ----------------------------------------------------------------------------- byte-level BPE training


def test_train_byte_level_bpe_loads_in_transformers(small_corpus, tmp_path):
    out_dir = tmp_path / "tokenizer"
    tokenizer = train_byte_level_bpe(small_corpus, 1000, str(out_dir))
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
        "vocab.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]
    assert tokenizer.get_vocab_size() == 1000
    assert [tokenizer.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert special_token_ids(tokenizer) == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert isinstance(hf_tokenizer, transformers.RobertaTokenizerFast) and len(hf_tokenizer) == 1000
    for text in [*SENTENCES, "Fill the <mask> in, <s> and </s> are special."]:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    pair = hf_tokenizer(SENTENCES[0], SENTENCES[2], return_token_type_ids=True)
    encoding = tokenizer.encode(SENTENCES[0], SENTENCES[2])
    assert (pair["input_ids"], pair["token_type_ids"]) == (encoding.ids, encoding.type_ids)
    decoded = hf_tokenizer.decode(encoding.ids, skip_special_tokens=True)
    assert decoded == SENTENCES[0] + SENTENCES[2]
    assert load_tokenizer(str(out_dir)).to_str() == tokenizer.to_str()


def test_a_roberta_folder_without_tokenizer_json_loads_as_transformers_builds_it(small_corpus, tmp_path):
    """vocab.json + merges.txt (+ config files), as slow-tokenizer saves leave them: the
    same rows as the full folder and as transformers' RobertaTokenizerFast."""
    full = tmp_path / "full"
    train_byte_level_bpe(small_corpus, 1500, str(full))
    slow = tmp_path / "slow"
    slow.mkdir()
    for file in full.iterdir():
        if file.name != "tokenizer.json":
            shutil.copy(file, slow / file.name)
    theirs = transformers.AutoTokenizer.from_pretrained(slow)
    assert isinstance(theirs, transformers.RobertaTokenizerFast)
    ours = load_tokenizer(str(slow))
    for texts in (["The cat sat."], ["Where is it? <mask> here", "It is in Paris, said the man."]):
        assert ours.encode(*texts).ids == theirs(*texts).input_ids
        if "<mask>" not in texts[0]:  # the trained tokenizer.json strips the space before <mask>, as RoBERTa's
            assert load_tokenizer(str(full)).encode(*texts).ids == theirs(*texts).input_ids
    assert special_token_ids(ours) == special_token_ids(load_tokenizer(str(full)))
    (slow / "merges.txt").unlink()
    with pytest.raises(InputError, match=r"no tokenizer.json, vocab.txt or vocab.json \+ merges.txt"):
        load_tokenizer(str(slow))


def test_train_byte_level_bpe_is_deterministic(small_corpus, tmp_path):
    train_byte_level_bpe(small_corpus, 1500, str(tmp_path / "here"))
    (tmp_path / "docs.json").write_text(json.dumps(small_corpus))
    program = (
        "import json, sys; from flaxft.data.tokenizer_training import train_byte_level_bpe; "
        "train_byte_level_bpe(json.load(open(sys.argv[1])), 1500, sys.argv[2])"
    )
    for seed in ("1", "987"):  # other processes, other hash seeds
        subprocess.run(
            [sys.executable, "-c", program, str(tmp_path / "docs.json"), str(tmp_path / seed)],
            env=dict(os.environ, PYTHONHASHSEED=seed), check=True,
        )
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            assert (tmp_path / seed / name).read_bytes() == (tmp_path / "here" / name).read_bytes()


def test_small_corpus_byte_level_vocab_is_padded_with_reserved_tokens(tmp_path):
    documents = ["a tiny corpus with few words", "few words indeed"]
    tokenizer = train_byte_level_bpe(documents, 300, str(tmp_path / "tok"))
    assert tokenizer.get_vocab_size() == 300
    assert tokenizer.id_to_token(299).startswith("<unused")
    assert "<unused3>" not in tokenizer.encode("tiny <unused3> words").tokens  # never from text
    assert len(json.loads((tmp_path / "tok" / "vocab.json").read_text())) == 300
    with pytest.raises(InputError, match="at least 261"):
        train_byte_level_bpe(["text"], 260)


def test_save_tokenizer_writes_any_byte_level_bpe_tokenizer(tmp_path):
    """A RoBERTa-style folder (mask last, prefix space off) saved again reads the same."""
    tokenizer = load_tokenizer(str(roberta_style_folder(tmp_path / "in")))
    save_tokenizer(tokenizer, tmp_path / "out")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf_tokenizer(SENTENCES[1])["input_ids"] == tokenizer.encode(SENTENCES[1]).ids
    assert hf_tokenizer.mask_token_id == tokenizer.get_vocab_size() - 1
    with pytest.raises(ValueError, match="not sentencepiece"):
        save_tokenizer(Tokenizer(models.Unigram()), tmp_path / "unigram")
