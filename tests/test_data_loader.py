"""PretrainLoader: shapes, host sharding, resume, epochs, determinism."""

import json

import numpy as np
import pytest

from flaxft.data.examples import Examples
from flaxft.data.stream import InMemory, PretrainLoader
from flaxft.errors import InputError

SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
NUM_EXAMPLES, SEQ_LEN = 20, 16


def make_rows(num_examples=NUM_EXAMPLES, seq_len=SEQ_LEN):
    """Rows [CLS] text [SEP] [PAD]...; token_type_ids hold the row index, which the loader
    passes through untouched, so every batch reveals which examples it holds."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(5, 100, (num_examples, seq_len)).astype(np.int32)
    lengths = rng.integers(4, seq_len + 1, num_examples)
    real = np.arange(seq_len) < lengths[:, None]
    input_ids[:, 0] = 2
    input_ids[np.arange(num_examples), lengths - 1] = 3
    input_ids[~real] = 0
    return Examples(
        input_ids=input_ids,
        token_type_ids=np.repeat(np.arange(num_examples, dtype=np.int32)[:, None], seq_len, 1),
        segment_ids=real.astype(np.int32),
        word_starts=real & (input_ids > 4),
        special_mask=np.isin(input_ids, [0, 2, 3]),
        next_sentence_label=(np.arange(num_examples) % 2).astype(np.int32),
    )


def make_loader(examples=None, global_batch_size=4, seed=0, **options):
    return PretrainLoader(
        make_rows() if examples is None else examples, global_batch_size, seed,
        vocab_size=100, special_ids=SPECIAL_IDS, **options,
    )


def example_indices(batch):
    return batch["token_type_ids"][:, 0].tolist()


def assert_batches_equal(first, second):
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_batch_keys_shapes_and_dtypes():
    examples = make_rows()
    batch = make_loader(examples, global_batch_size=8, max_predictions=3).get_batch(0)
    expected = {
        "input_ids": ((8, SEQ_LEN), np.int32),
        "attention_mask": ((8, SEQ_LEN), np.int32),
        "token_type_ids": ((8, SEQ_LEN), np.int32),
        "segment_ids": ((8, SEQ_LEN), np.int32),
        "masked_positions": ((8, 3), np.int32),
        "masked_labels": ((8, 3), np.int32),
        "masked_weights": ((8, 3), np.float32),
        "next_sentence_label": ((8,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    rows = example_indices(batch)
    np.testing.assert_array_equal(batch["attention_mask"], examples.segment_ids[rows] > 0)
    assert make_loader(examples).max_predictions_for(SEQ_LEN) == round(0.15 * SEQ_LEN)


def test_epochs_are_permutations_reshuffled_each_epoch():
    loader = make_loader()
    steps_per_epoch = NUM_EXAMPLES // 4
    stream = [example_indices(loader.get_batch(step)) for step in range(3 * steps_per_epoch)]
    epochs = [sum(stream[e * steps_per_epoch : (e + 1) * steps_per_epoch], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(NUM_EXAMPLES))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] == np.random.default_rng([0, 0]).permutation(NUM_EXAMPLES).tolist()
    unshuffled = make_loader(shuffle=False)
    assert example_indices(unshuffled.get_batch(1)) == [4, 5, 6, 7]
    same_rows_next_epoch = unshuffled.get_batch(1 + steps_per_epoch)
    assert example_indices(same_rows_next_epoch) == [4, 5, 6, 7]
    first_epoch_positions = unshuffled.get_batch(1)["masked_positions"]
    assert not np.array_equal(same_rows_next_epoch["masked_positions"], first_epoch_positions)


def test_batches_straddle_epoch_boundaries():
    loader = make_loader(global_batch_size=6)  # 20 is no multiple of 6
    stream = sum((example_indices(loader.get_batch(step)) for step in range(10)), [])
    orders = [np.random.default_rng([0, e]).permutation(NUM_EXAMPLES).tolist() for e in range(3)]
    assert stream == sum(orders, [])[:60]


def split_rows(examples, parts):
    """`examples` cut into `parts` consecutive row ranges (chunks)."""
    return [Examples(**{k: v[index] for k, v in vars(examples).items()})
            for index in np.array_split(np.arange(len(examples)), parts)]


def chunked_source(streams=2, chunks_per_stream=3, rows_per_stream=NUM_EXAMPLES):
    """Stream k's rows are examples k*rows_per_stream ... (token_type_ids name them)."""
    everything = make_rows(num_examples=streams * rows_per_stream)
    per_stream = split_rows(everything, streams)
    return InMemory([split_rows(rows, chunks_per_stream) for rows in per_stream])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_serve_their_streams_of_the_global_batch(process_count):
    """Every process serves S / P streams; their rows, concatenated, are the batch one
    process serving all S streams makes."""
    source = chunked_source(streams=4)
    single = make_loader(source, global_batch_size=8, whole_word=True)
    processes = [make_loader(source, global_batch_size=8, whole_word=True, process_index=p,
                             process_count=process_count) for p in range(process_count)]
    for step in [0, 1, 7, 19]:
        local = [process.get_batch(step) for process in processes]
        assert all(len(batch["input_ids"]) == 8 // process_count for batch in local)
        joined = {key: np.concatenate([batch[key] for batch in local]) for key in local[0]}
        assert_batches_equal(joined, single.get_batch(step))
        # stream k fills rows 2k, 2k+1 of the global batch with its own examples only
        assert [i // NUM_EXAMPLES for i in example_indices(joined)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_epochs_over_chunks_visit_every_row_once_and_blocks_mix_their_chunks_only():
    source = chunked_source(streams=1, chunks_per_stream=4)  # chunks of 5 rows
    loader = make_loader(source, global_batch_size=5, mix_chunks=2)
    epochs = [sum((example_indices(loader.get_batch(s)) for s in range(4 * e, 4 * e + 4)), []) for e in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(NUM_EXAMPLES))
        blocks = [set(order[:10]), set(order[10:])]  # two blocks of two chunks each
        assert all(len({i // 5 for i in block}) == 2 for block in blocks)
    assert epochs[0] != epochs[1]
    unmixed = make_loader(source, global_batch_size=5, mix_chunks=1)
    assert all(len({i // 5 for i in example_indices(unmixed.get_batch(s))}) == 1 for s in range(4))


def test_resuming_reads_no_chunk_before_the_saved_position():
    class Counting(InMemory):
        def rows(self, stream, index, rows):
            self.asked.add((stream, index))
            return super().rows(stream, index, rows)

        def num_rows(self, stream, index):
            self.asked.add((stream, index))
            return super().num_rows(stream, index)

    def source():
        counting = Counting(chunked_source(streams=2, chunks_per_stream=4, rows_per_stream=40).chunks)
        counting.asked = set()
        return counting

    original = make_loader(source(), global_batch_size=4, mix_chunks=1)
    for _ in range(15):  # stream position 30 of 40: in the fourth of each stream's chunks
        next(original)
    state = original.state()
    assert set(state) == {"step", "seed", "global_batch_size", "streams", "mix_chunks", "corpus", "positions"}
    assert state["step"] == 15 and {tuple(v[:2]) for v in state["positions"].values()} == {(0, 3)}
    expected = [next(original) for _ in range(8)]  # into the second epoch
    resumed_source = source()
    resumed = make_loader(resumed_source, global_batch_size=4, mix_chunks=1)
    resumed.restore(json.loads(json.dumps(state)))
    assert_batches_equal(next(resumed), expected[0])
    asked_first = set(resumed_source.asked)
    assert len(asked_first) == 2  # one chunk per stream: the one the position is in
    for batch in expected[1:]:
        assert_batches_equal(next(resumed), batch)
    original.close()
    resumed.close()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_from_state_continues_identically(prefetch):
    original = make_loader(prefetch=prefetch)
    for _ in range(7):
        next(original)
    state = original.state()
    assert state["step"] == 7 and state["positions"] == {"0": [1, 0, 8]}  # 28 rows: epoch 1, row 8
    expected = [next(original) for _ in range(6)]
    resumed = make_loader(prefetch=prefetch)
    next(resumed)  # state elsewhere must not matter
    resumed.restore(state)
    for batch in expected:
        assert_batches_equal(next(resumed), batch)
    assert resumed.state()["step"] == 13
    legacy = make_loader(prefetch=prefetch)  # a state written before streams (one array of rows)
    legacy.restore({"step": 7, "seed": 0, "global_batch_size": 4, "num_examples": NUM_EXAMPLES})
    assert_batches_equal(next(legacy), expected[0])
    for loader in (original, resumed, legacy):
        loader.close()


def test_iteration_equals_random_access_and_seed_matters():
    loader = make_loader(prefetch=2)
    iterated = [next(loader) for _ in range(8)]
    loader.close()
    other = make_loader(prefetch=0)
    for step, batch in enumerate(iterated):
        assert_batches_equal(batch, other.get_batch(step))
    reseeded = make_loader(seed=1).get_batch(0)
    assert not all((reseeded[k] == iterated[0][k]).all() for k in iterated[0])


def test_bad_arguments_and_mismatched_state():
    with pytest.raises(InputError, match="global_batch_size 6 .* process count 4"):
        make_loader(global_batch_size=6, process_count=4)
    with pytest.raises(InputError, match=r"config.data.streams \(1\) must be a multiple of the process count \(2\)"):
        make_loader(global_batch_size=4, process_count=2)
    with pytest.raises(InputError, match="stream 0 has no training rows"):
        make_loader(make_rows(num_examples=0)).get_batch(0)
    loader = make_loader()
    state = loader.state()
    with pytest.raises(InputError, match="global_batch_size=8"):
        loader.restore({**state, "global_batch_size": 8})
    with pytest.raises(InputError, match="seed"):
        loader.restore({**state, "seed": 5})
    with pytest.raises(InputError, match="streams=2"):
        loader.restore({**state, "streams": 2})
    with pytest.raises(InputError, match="num_examples=21"):
        loader.restore({"step": 3, "seed": 0, "global_batch_size": 4, "num_examples": 21})


def test_an_unshuffled_loader_can_visit_chunks_in_the_order_training_prepares_them():
    source = chunked_source(streams=1, chunks_per_stream=4)  # chunks of 5 rows: chunk = index // 5
    train = make_loader(source, global_batch_size=5, mix_chunks=2, seed=3)
    first_block = {i // 5 for s in range(2) for i in example_indices(train.get_batch(s))}
    held_out = make_loader(source, global_batch_size=5, seed=4, shuffle=False, chunk_order_seed=3)
    visited = [example_indices(held_out.get_batch(s)) for s in range(4)]
    assert {i // 5 for i in visited[0] + visited[1]} == first_block
    assert all(rows == sorted(rows) for rows in visited)  # rows in order within a chunk
    in_order = make_loader(source, global_batch_size=5, shuffle=False)
    assert [example_indices(in_order.get_batch(s)) for s in range(4)] == [list(range(5 * c, 5 * c + 5))
                                                                          for c in range(4)]


def test_empty_chunks_at_the_end_and_start_of_epochs_are_skipped():
    rows = make_rows(num_examples=6)
    source = InMemory([[rows, make_rows(num_examples=0), make_rows(num_examples=0)]])
    loader = make_loader(source, global_batch_size=3, mix_chunks=1)
    seen = [example_indices(loader.get_batch(step)) for step in range(12)]  # 6 epochs of rows 0-5
    assert all(sorted(seen[2 * e] + seen[2 * e + 1]) == list(range(6)) for e in range(6))
