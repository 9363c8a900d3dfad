"""Loader throughput check: `python -m flaxft.data.throughput [TOKENIZER] [SEQ_LEN] [BATCH]`.

Builds examples from the default corpus (no cache) and times `PretrainLoader` batches,
with and without whole-word masking, for both formats; prints tokens (row positions,
padding included) per second. Without TOKENIZER it trains an 8k WordPiece tokenizer on
the default corpus first. Defaults: seq_len 128, batch 8.
"""

import sys
import tempfile
import time

from flaxft.data.corpus import DEFAULT_CORPUS, default_corpus
from flaxft.data.loader import PretrainLoader
from flaxft.data.pipeline import build_examples
from flaxft.data.tokenizer import load_tokenizer, special_token_ids, train_wordpiece

_TIMED_BATCHES = 300


def main(argv: list[str]) -> None:
    tokenizer_path = argv[0] if argv else None
    seq_len = int(argv[1]) if len(argv) > 1 else 128
    batch_size = int(argv[2]) if len(argv) > 2 else 8
    if tokenizer_path is None:
        tokenizer = train_wordpiece(default_corpus(), 8000, tempfile.mkdtemp())
    else:
        tokenizer = load_tokenizer(tokenizer_path)
    for format in ("bert", "roberta"):
        started = time.perf_counter()
        examples = build_examples(DEFAULT_CORPUS, tokenizer, seq_len, format, 0, None)
        build_seconds = time.perf_counter() - started
        for whole_word in (False, True):
            loader = PretrainLoader(
                examples, batch_size, 0, vocab_size=tokenizer.get_vocab_size(),
                special_ids=special_token_ids(tokenizer), whole_word=whole_word, prefetch=0,
            )
            next(loader)  # warm the epoch order
            started = time.perf_counter()
            for _ in range(_TIMED_BATCHES):
                next(loader)
            seconds = time.perf_counter() - started
            print(
                f"{format:8s} whole_word={whole_word!s:5s} seq_len={seq_len} batch={batch_size}: "
                f"{_TIMED_BATCHES * batch_size * seq_len / seconds:10,.0f} tokens/s "
                f"({seconds / _TIMED_BATCHES * 1e3:.2f} ms/batch; {len(examples)} rows "
                f"built in {build_seconds:.1f} s)"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
