"""Reading fine-tuning splits: CSV, TSV, JSON(L), SQuAD json, Parquet, Hugging Face datasets."""

import itertools
import json

import pytest

from flaxft.data import records
from flaxft.data.features import truncate_pair
from flaxft.errors import InputError

ROWS = [{"text": "a good film", "label": 1}, {"text": "NA", "label": 0}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_csv_keeps_numbers_and_text_like_na(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label,score\n"a, quoted, film",1,0.5\nNA,0,2.0\n')
    split = records.read_split(str(path))
    assert split.records == [
        {"text": "a, quoted, film", "label": 1, "score": 0.5},
        {"text": "NA", "label": 0, "score": 2.0},
    ]
    assert type(split.records[0]["label"]) is int  # Python numbers, not numpy scalars
    assert split.source == str(path)


def test_tsv_without_quoting(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('sentence\tlabel\nit is "fine\t1\n')
    assert records.read_split(str(path)).records == [{"sentence": 'it is "fine', "label": 1}]


def test_jsonl_json_list_and_data_key(tmp_path):
    assert records.read_split(write_jsonl(tmp_path / "a.jsonl", ROWS)).records == ROWS
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    assert records.read_split(str(tmp_path / "b.json")).records == ROWS
    (tmp_path / "c.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    assert records.read_split(str(tmp_path / "c.json")).records == ROWS
    write_jsonl(tmp_path / "d.json", ROWS)  # JSON lines under a .json name
    assert records.read_split(str(tmp_path / "d.json")).records == ROWS


def test_squad_nested_json_is_flattened(tmp_path):
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Where is Paris?",
                                "answers": [{"text": "France", "answer_start": 12}],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "dev.json").write_text(json.dumps(squad))
    assert records.read_split(str(tmp_path / "dev.json")).records == [
        {
            "id": "q1",
            "title": "T",
            "context": "Paris is in France.",
            "question": "Where is Paris?",
            "answers": {"text": ["France"], "answer_start": [12]},
        }
    ]


def test_parquet_with_list_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    assert records.read_split(str(tmp_path / "t.parquet")).records == rows


def test_saved_dataset_dict_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X"])),
        }
    )
    data = {"sentence": ["bad", "good"], "label": [0, 1], "tags": [[0], [1]]}
    whole = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(data, features=features),
            "validation_matched": datasets.Dataset.from_dict(data, features=features),
        }
    )
    whole.save_to_disk(str(tmp_path / "ds"))
    train, validation = records.load_splits(dataset=str(tmp_path / "ds"))
    assert train.records[1] == {"sentence": "good", "label": 1, "tags": [1]}
    assert train.class_names == {"label": ["negative", "positive"], "tags": ["O", "B-X"]}
    assert validation.source.endswith("[validation_matched]")
    # One split of it, named as a file would be:
    single = records.read_split(str(tmp_path / "ds"), "train")
    assert single.records == train.records
    with pytest.raises(InputError, match="no 'test' split"):
        records.read_split(str(tmp_path / "ds"), "test", what="task.validation_file")


def test_uncached_hub_dataset_is_an_input_error_naming_it():
    with pytest.raises(InputError, match="task.dataset 'no-such-owner/no-such-dataset:cfg'"):
        records.load_splits(dataset="no-such-owner/no-such-dataset:cfg")


def test_bad_inputs_name_the_key_and_path(tmp_path):
    with pytest.raises(InputError, match="task.train_file or task.dataset"):
        records.load_splits()
    with pytest.raises(InputError, match="task.train_file .*missing.csv.* does not exist"):
        records.load_splits(train_file=str(tmp_path / "missing.csv"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="task.validation_file .*empty.jsonl.* is empty"):
        records.load_splits(
            train_file=write_jsonl(tmp_path / "t.jsonl", ROWS),
            validation_file=str(tmp_path / "empty.jsonl"),
        )
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv"):
        records.read_split(str(tmp_path / "empty.csv"))
    (tmp_path / "header_only.csv").write_text("text,label\n")
    with pytest.raises(InputError, match="header_only.csv.* is empty"):
        records.read_split(str(tmp_path / "header_only.csv"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        records.read_split(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        records.read_split(str(tmp_path / "x.txt"))


def test_require_fields_names_file_column_and_key(tmp_path):
    split = records.read_split(write_jsonl(tmp_path / "t.jsonl", ROWS))
    with pytest.raises(InputError, match=r"t.jsonl: no column 'sentence' \(task.text_fields\)"):
        records.require_fields(split, ["text", "sentence"], {"sentence": "task.text_fields"})


def test_truncate_pair_longest_first():
    assert truncate_pair(3, 4, 10) == (3, 4)
    assert truncate_pair(10, 2, 8) == (6, 2)
    assert truncate_pair(2, 10, 8) == (2, 6)
    assert truncate_pair(10, 9, 8) == (4, 4)
    assert truncate_pair(10, 9, 7) == (4, 3)
    assert truncate_pair(9, 10, 7) == (3, 4)  # the longer part gets the odd token
    assert truncate_pair(10, 10, 7) == (3, 4)  # the second on ties
    assert truncate_pair(20, 5, 8) == (4, 4)  # as tokenizers: both halved, not 3 + 5


def test_truncate_pair_matches_hugging_face_tokenizers(minilm_dir):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    cat, dog = tokenizer.convert_tokens_to_ids(["cat", "dog"])
    for len_a, len_b, budget in itertools.product(range(1, 10), range(1, 10), range(2, 10)):
        ids = tokenizer(" ".join(["cat"] * len_a), " ".join(["dog"] * len_b), truncation=True,
                        max_length=budget + 3)["input_ids"]
        assert truncate_pair(len_a, len_b, budget) == (ids.count(cat), ids.count(dog)), (
            len_a, len_b, budget)
