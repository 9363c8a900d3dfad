"""Sentence tokenization, NSP pairs ("bert"), packed sequences ("roberta"), held-out split."""

import numpy as np
import pytest
import transformers

from flaxft.data.arrays import offsets
from flaxft.data.examples import make_examples, split_documents
from flaxft.data.tokenize import TokenizedCorpus, split_sentences, tokenize_documents
from flaxft.data.tokenizer import load_tokenizer, special_token_ids
from flaxft.errors import InputError

PAD, CLS, SEP = 0, 1, 2
SPECIAL_IDS = {"pad": PAD, "unk": 3, "cls": CLS, "sep": SEP, "mask": 4}
FIRST_TEXT_ID = 10


def synthetic_corpus(sentence_lengths_per_document):
    """A corpus whose token i has id FIRST_TEXT_ID + i, so every id names its position."""
    sentence_lengths = np.concatenate(
        [np.asarray(lengths, np.int64) for lengths in sentence_lengths_per_document]
    )
    num_tokens = int(sentence_lengths.sum())
    return TokenizedCorpus(
        token_ids=np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + num_tokens, dtype=np.int32),
        word_starts=np.arange(num_tokens) % 3 == 0,
        sentence_offsets=offsets(sentence_lengths),
        document_offsets=offsets([len(d) for d in sentence_lengths_per_document]),
    )


def random_corpus(seed, num_documents, max_sentences=20, max_sentence_length=12):
    rng = np.random.default_rng(seed)
    return synthetic_corpus(
        [rng.integers(1, max_sentence_length + 1, rng.integers(1, max_sentences + 1))
         for _ in range(num_documents)]
    )


def document_of_token(corpus):
    """[T] document index of every corpus token."""
    return np.repeat(np.arange(corpus.num_documents), np.diff(corpus.document_token_offsets()))


def bert_pair(row_ids):
    """(A positions, B positions) in the corpus, from one "bert" row."""
    separators = np.flatnonzero(row_ids == SEP)
    assert row_ids[0] == CLS and len(separators) == 2
    a = row_ids[1 : separators[0]]
    b = row_ids[separators[0] + 1 : separators[1]]
    return a - FIRST_TEXT_ID, b - FIRST_TEXT_ID


def test_split_sentences_rule():
    text = 'He said "Hi." Then left. E.g. the cat ran! 3 dogs? (Yes.) ok\nNew line. mr. x\n\n'
    assert split_sentences(text) == [
        'He said "Hi."', "Then left.", "E.g. the cat ran!", "3 dogs?", "(Yes.) ok",
        "New line. mr. x",
    ]


def test_tokenize_documents_matches_per_sentence_encoding(minilm_dir):
    tokenizer = load_tokenizer(str(minilm_dir))
    tokenizer.enable_truncation(8)  # must be ignored, and the caller's tokenizer left alone
    long_sentence = " ".join(["unaffordable"] * 40) + "."
    documents = ["First doc. It has [SEP] text.", "   ", long_sentence + "\nLast line"]
    corpus = tokenize_documents(documents, tokenizer, batch_size=2)
    assert tokenizer.truncation["max_length"] == 8
    tokenizer.no_truncation()
    sentences = [s for d in documents for s in split_sentences(d)]
    assert corpus.num_documents == 2
    assert corpus.document_offsets.tolist() == [0, 2, 4]
    for index, sentence in enumerate(sentences):
        tokens = slice(corpus.sentence_offsets[index], corpus.sentence_offsets[index + 1])
        encoding = tokenizer.encode(sentence, add_special_tokens=False)
        if "[SEP]" in sentence:  # literal special-token text is ordinary text
            assert 102 not in corpus.token_ids[tokens]
        else:
            assert corpus.token_ids[tokens].tolist() == encoding.ids
        assert corpus.token_ids.dtype == np.int32
    unaffordable = tokenizer.encode("unaffordable", add_special_tokens=False).ids
    assert len(unaffordable) == 4
    long_tokens = slice(corpus.sentence_offsets[2], corpus.sentence_offsets[2] + 8)
    assert corpus.word_starts[long_tokens].tolist() == [True, False, False, False] * 2
    assert corpus.word_starts[corpus.sentence_offsets[:-1]].all()


def test_select_keeps_documents_whole_and_in_the_given_order():
    corpus = synthetic_corpus([[2, 3], [4], [1, 1, 1]])
    picked = corpus.select(np.array([2, 0]))
    assert picked.token_ids.tolist() == [19, 20, 21, 10, 11, 12, 13, 14]
    assert picked.sentence_offsets.tolist() == [0, 1, 2, 3, 5, 8]
    assert picked.document_offsets.tolist() == [0, 3, 5]


def test_bert_rows_pair_a_with_its_continuation_or_another_document():
    corpus = random_corpus(seed=0, num_documents=300)
    seq_len = 48
    examples = make_examples(corpus, seq_len, "bert", seed=1, special_ids=SPECIAL_IDS)
    documents = document_of_token(corpus)
    labels = examples.next_sentence_label
    assert examples.input_ids.shape == (len(labels), seq_len) and len(labels) > 800
    assert 0.4 < labels.mean() < 0.6  # about half NotNext
    for row in range(len(labels)):
        ids = examples.input_ids[row]
        a, b = bert_pair(ids)
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= seq_len - 3
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # contiguous text
        assert len(set(documents[a])) == 1 and len(set(documents[b])) == 1
        if labels[row] == 0:  # IsNext: B continues A in the same document
            assert documents[a[0]] == documents[b[0]] and b[0] > a[-1]
            if len(a) + len(b) < seq_len - 3:  # untrimmed: B starts where A ends
                assert b[0] == a[-1] + 1
        else:
            assert documents[a[0]] != documents[b[0]]
        length = len(a) + len(b) + 3
        assert (ids[length:] == PAD).all()
        expected_types = [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (seq_len - length)
        assert examples.token_type_ids[row].tolist() == expected_types
        assert examples.segment_ids[row].tolist() == [1] * length + [0] * (seq_len - length)
        assert (examples.special_mask[row] == np.isin(ids, [PAD, CLS, SEP])).all()
        assert not examples.word_starts[row][examples.special_mask[row]].any()
        assert examples.word_starts[row][[1, len(a) + 2]].all()  # each side opens a word
    for name in ["input_ids", "token_type_ids", "segment_ids", "next_sentence_label"]:
        assert getattr(examples, name).dtype == np.int32


def test_bert_rows_cover_the_corpus_and_are_deterministic():
    corpus = random_corpus(seed=3, num_documents=50)
    first = make_examples(corpus, 64, "bert", seed=7, special_ids=SPECIAL_IDS)
    again = make_examples(corpus, 64, "bert", seed=7, special_ids=SPECIAL_IDS)
    other = make_examples(corpus, 64, "bert", seed=8, special_ids=SPECIAL_IDS)
    for name in ["input_ids", "token_type_ids", "next_sentence_label", "word_starts"]:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.input_ids, other.input_ids)
    a_tokens = np.concatenate([bert_pair(ids)[0] for ids in first.input_ids])
    assert len(np.unique(a_tokens)) == len(a_tokens)  # A sides never repeat text
    assert len(a_tokens) > 0.3 * len(corpus.token_ids)


def test_bert_needs_two_documents_and_room():
    with pytest.raises(InputError, match="2 documents"):
        make_examples(synthetic_corpus([[3, 4]]), 16, "bert", 0, SPECIAL_IDS)
    with pytest.raises(InputError, match="seq_len"):
        make_examples(synthetic_corpus([[3], [4]]), 4, "bert", 0, SPECIAL_IDS)
    with pytest.raises(InputError, match="format"):
        make_examples(synthetic_corpus([[3], [4]]), 16, "gpt", 0, SPECIAL_IDS)


def test_roberta_packs_whole_sequences_in_corpus_order():
    corpus = random_corpus(seed=5, num_documents=200, max_sentences=8)
    seq_len = 32
    examples = make_examples(corpus, seq_len, "roberta", seed=0, special_ids=SPECIAL_IDS)
    documents = document_of_token(corpus)
    text = []
    for row in range(len(examples)):
        ids, segments = examples.input_ids[row], examples.segment_ids[row]
        real = int((segments > 0).sum())
        assert (segments[:real] > 0).all() and (ids[real:] == PAD).all()
        starts = np.flatnonzero(np.diff(segments[:real], prepend=0))
        assert segments[starts].tolist() == list(range(1, len(starts) + 1))
        for start, end in zip(starts, [*starts[1:], real]):  # [CLS] piece [SEP], one document
            assert ids[start] == CLS and ids[end - 1] == SEP
            piece = ids[start + 1 : end - 1] - FIRST_TEXT_ID
            assert 1 <= len(piece) <= seq_len - 2 and len(set(documents[piece])) == 1
            assert examples.word_starts[row][start + 1]
            text.append(piece)
        assert (examples.special_mask[row] == np.isin(ids, [PAD, CLS, SEP])).all()
    assert np.concatenate(text).tolist() == list(range(len(corpus.token_ids)))
    assert not examples.token_type_ids.any() and not examples.next_sentence_label.any()
    lengths = np.diff(corpus.document_token_offsets())
    assert len(text) == int((-(-lengths // (seq_len - 2))).sum())  # pieces only where needed
    used = (examples.segment_ids > 0).sum(axis=1)
    first_width = (examples.segment_ids == 1).sum(axis=1)
    assert (used[:-1] + first_width[1:] > seq_len).all()  # next fit: no row could take more


def test_roberta_and_xlmr_tokenizers_give_rows_as_transformers_encodes(roberta_or_xlmr_dir):
    """Each document's sequence is transformers' <s> document </s> (a sentence after the
    first keeps the space before it: "ĠAnd"; a line break reads as a space), <pad> after;
    "bert" pairs are <s> A </s> B </s>."""
    tokenizer = load_tokenizer(str(roberta_or_xlmr_dir))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(roberta_or_xlmr_dir))
    documents = [
        "One short sentence here. And a second one follows!",
        "Another document, with commas.\nIts second line.",
        "A third one? Yes.",
    ]
    special_ids = special_token_ids(tokenizer)
    corpus = tokenize_documents(documents, tokenizer)
    examples = make_examples(corpus, 96, "roberta", seed=0, special_ids=special_ids)
    running_text = [document.replace("\n", " ") for document in documents]
    expected = [i for text in running_text for i in hf_tokenizer(text)["input_ids"]]
    assert len(examples) == 1
    assert examples.input_ids[0].tolist() == expected + [special_ids["pad"]] * (96 - len(expected))
    assert (examples.special_mask == np.isin(examples.input_ids, [0, 1, 2])).all()
    pairs = make_examples(corpus, 96, "bert", seed=0, special_ids=special_ids)
    assert (pairs.input_ids[:, 0] == special_ids["cls"]).all()
    assert ((pairs.input_ids == special_ids["sep"]).sum(axis=1) == 2).all()


def test_split_documents_is_a_seed_free_partition():
    train, evaluation = split_documents(1000, 0.05)
    assert len(evaluation) == 50 and len(train) == 950
    assert sorted([*train, *evaluation]) == list(range(1000))
    again_train, again_eval = split_documents(1000, 0.05)
    assert (again_eval == evaluation).all()
    assert len(split_documents(10, 0.01)[1]) == 1
    assert len(split_documents(10, 0.0)[1]) == 0
    with pytest.raises(InputError, match="eval_fraction"):
        split_documents(10, 1.0)
    with pytest.raises(InputError, match="eval_fraction"):
        split_documents(1, 0.5)
