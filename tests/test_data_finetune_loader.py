"""FinetuneLoader: epoch shuffling, determinism, resume, host slicing, padded evaluation;
PackedFinetuneLoader: the same examples per step, packed into one row count per run."""

import numpy as np
import pytest

from flaxft.data.loader import FinetuneLoader, PackedFinetuneLoader, concat_outputs
from flaxft.errors import InputError

N = 10


def arrays(n=N):
    return {
        "row": np.arange(n, dtype=np.int32),
        "input_ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3),
    }


def rows(batch):
    return batch["row"].tolist()


def test_training_epochs_are_permutations_seeded_by_seed_and_epoch():
    loader = FinetuneLoader(arrays(), 5, seed=3)
    stream = [row for _ in range(6) for row in rows(next(loader))]  # 3 epochs of 10
    for epoch in range(3):
        assert (
            stream[epoch * N : (epoch + 1) * N]
            == np.random.default_rng([3, epoch]).permutation(N).tolist()
        )
    assert stream[:N] != stream[N : 2 * N]  # reshuffled every epoch
    batch = loader.get_batch(0)
    assert batch["weights"].tolist() == [1.0] * 5 and batch["weights"].dtype == np.float32
    np.testing.assert_array_equal(batch["input_ids"], arrays()["input_ids"][batch["row"]])
    assert loader.epoch(2) == 1.0


def test_batches_span_epoch_boundaries_and_stay_full():
    loader = FinetuneLoader(arrays(), 4, seed=0)
    stream = [row for step in range(5) for row in rows(loader.get_batch(step))]
    assert sorted(stream[:N]) == list(range(N)) and sorted(stream[N:20]) == list(range(N))


def test_same_seed_same_batches_and_resume():
    first = FinetuneLoader(arrays(), 4, seed=7)
    batches = [next(first) for _ in range(7)]
    resumed = FinetuneLoader(arrays(), 4, seed=7)
    resumed.restore({"step": 3, "seed": 7, "global_batch_size": 4, "num_examples": N})
    for expected in batches[3:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    assert first.state() == {"step": 7, "seed": 7, "global_batch_size": 4, "num_examples": N}
    assert rows(FinetuneLoader(arrays(), 4, seed=8).get_batch(0)) != rows(batches[0])
    with pytest.raises(InputError, match="num_examples=11"):
        FinetuneLoader(arrays(), 4, seed=7).restore(
            {"step": 1, "seed": 7, "global_batch_size": 4, "num_examples": 11}
        )


def test_hosts_take_contiguous_slices_of_the_global_batch():
    whole = FinetuneLoader(arrays(), 6, seed=1)
    hosts = [
        FinetuneLoader(arrays(), 6, seed=1, process_index=p, process_count=3) for p in range(3)
    ]
    for step in range(4):
        expected = rows(whole.get_batch(step))
        for p, host in enumerate(hosts):
            assert rows(host.get_batch(step)) == expected[2 * p : 2 * p + 2]
    evaluation = [
        FinetuneLoader(arrays(), 6, shuffle=False, process_index=p, process_count=2)
        for p in range(2)
    ]
    last = [loader.get_batch(1) for loader in evaluation]
    assert [rows(b) for b in last] == [[6, 7, 8], [9, 0, 0]]
    assert [b["weights"].tolist() for b in last] == [[1, 1, 1], [1, 0, 0]]


def test_evaluation_is_ordered_and_padded_with_zero_weight_rows():
    loader = FinetuneLoader(arrays(), 4, shuffle=False)
    batches = list(loader)
    assert loader.num_batches == 3 and len(batches) == 3
    assert [rows(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert batches[2]["weights"].tolist() == [1, 1, 0, 0]
    assert list(loader) and len(list(loader)) == 3  # every iteration is a fresh pass
    with pytest.raises(IndexError):
        loader.get_batch(3)
    outputs = concat_outputs([{"logits": b["input_ids"]} for b in batches], N)
    np.testing.assert_array_equal(outputs["logits"], arrays()["input_ids"])


def test_bad_arguments():
    with pytest.raises(InputError, match="no examples"):
        FinetuneLoader(arrays(0), 4)
    with pytest.raises(InputError, match="multiple of the process count"):
        FinetuneLoader(arrays(), 5, process_count=2)
    with pytest.raises(ValueError, match="differ in length"):
        FinetuneLoader({"a": np.zeros(3), "b": np.zeros(4)}, 2)


L = 8  # row length of the packed loader's examples


def classification_arrays(n=23):
    """Rows of 2..L real tokens (a token's id: 100 * its example's row + its position), labels = row."""
    lengths = 2 + (np.arange(n) * 5) % (L - 1)
    positions = np.arange(L)
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = (100 * np.arange(n)[:, None] + positions) * mask
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask, "token_type_ids": np.zeros_like(mask),
            "labels": np.arange(n, dtype=np.int32)}


def packed_examples(batch) -> list[int]:
    """The example rows whose [CLS]-position label sits in a filled slot of a real row."""
    filled = (batch["label_weights"] > 0) & (batch["weights"][:, None] > 0)
    return sorted(batch["labels"][filled].tolist())


def test_packed_batches_hold_each_steps_examples_in_one_row_count():
    from flaxft.tasks.classification import Classification

    pack = Classification(max_segments=4).pack_batch
    plain = FinetuneLoader(classification_arrays(), 8, seed=3)
    packed = PackedFinetuneLoader(classification_arrays(), 8, seed=3, pack=pack, num_steps=9)
    needed = [len(pack({k: v for k, v in plain.get_batch(s).items() if k != "weights"})["input_ids"])
              for s in range(9)]
    assert packed.rows == max(needed) < 8 and len(set(needed)) > 1  # the most any step needs
    for step in range(9):
        batch = packed.get_batch(step)
        assert batch["input_ids"].shape == (packed.rows, L) and batch["weights"].shape == (packed.rows,)
        assert batch["weights"].tolist() == [1.0] * needed[step] + [0.0] * (packed.rows - needed[step])
        assert packed_examples(batch) == sorted(rows_of(plain.get_batch(step)))  # the same examples
        tokens = batch["input_ids"][(batch["segment_ids"] > 0) & (batch["weights"][:, None] > 0)]
        assert sorted(tokens.tolist()) == sorted(  # every real token once, none of padding
            plain.get_batch(step)["input_ids"][plain.get_batch(step)["attention_mask"] > 0].tolist())
    again = PackedFinetuneLoader(classification_arrays(), 8, seed=3, pack=pack, num_steps=9)
    again.restore({"step": 4, "seed": 3, "global_batch_size": 8, "num_examples": 23})
    for step in range(4, 9):  # deterministic, and a resumed loader serves the same batches
        expected, got = packed.get_batch(step), next(again)
        assert expected.keys() == got.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    rounded = PackedFinetuneLoader(classification_arrays(), 8, seed=3, pack=pack, num_steps=9, row_multiple=4)
    assert rounded.rows == 4 * -(-packed.rows // 4)
    short = PackedFinetuneLoader(classification_arrays(), 8, seed=3, pack=pack, num_steps=1)
    past = next(s for s in range(9) if needed[s] > needed[0])
    with pytest.raises(ValueError, match="more than the"):
        short.get_batch(past)


def test_packed_hosts_pack_their_own_slice_into_the_same_row_count():
    from flaxft.tasks.classification import Classification

    pack = Classification(max_segments=4).pack_batch
    hosts = [PackedFinetuneLoader(classification_arrays(), 8, seed=1, pack=pack, num_steps=6, process_index=p,
                                  process_count=2) for p in range(2)]
    whole = FinetuneLoader(classification_arrays(), 8, seed=1)
    assert hosts[0].rows == hosts[1].rows
    for step in range(6):
        expected = rows_of(whole.get_batch(step))
        for p, host in enumerate(hosts):
            assert packed_examples(host.get_batch(step)) == sorted(expected[4 * p : 4 * p + 4])


def rows_of(batch):
    return batch["labels"].tolist()
