"""Tokenizers: loading (tokenizer.json or vocab.txt) and training, checked against transformers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers

from flaxft.data.corpus import default_corpus
from flaxft.data.tokenizer import load_tokenizer, special_token_ids, train_wordpiece
from flaxft.errors import InputError

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
    with pytest.raises(InputError, match="no tokenizer.json or vocab.txt"):
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
        "import json, sys; from flaxft.data.tokenizer import train_wordpiece; "
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
    from flaxft.data.tokenizer import copy_tokenizer_files, save_tokenizer

    tokenizer = train_wordpiece(["a few words to learn from, and a few more words"], 40)
    save_tokenizer(tokenizer, tmp_path / "folder")
    assert copy_tokenizer_files(tmp_path / "folder", tmp_path / "a") == [
        "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    odd = tmp_path / "elsewhere" / "my_tokenizer.json"  # a file under a name of its own
    odd.parent.mkdir()
    tokenizer.save(str(odd))
    assert copy_tokenizer_files(odd, tmp_path / "b") == ["tokenizer.json"]
    assert load_tokenizer(str(tmp_path / "b")).to_str() == tokenizer.to_str()
