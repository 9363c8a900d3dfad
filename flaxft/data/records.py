"""Fine-tuning data: files and Hugging Face datasets -> records (one dict per example).

A split is named by one string (`task.train_file`, `task.validation_file`), resolved as:

1. A file, read by suffix: `.csv`, `.tsv` (tab-separated, no quoting, as GLUE ships
   them), `.jsonl` (JSON lines), `.json` (JSON lines, a JSON list of records, an object
   whose `"data"` is such a list, or SQuAD's nested `{"data": [{"paragraphs": ...}]}`
   layout, flattened to one record per question), `.parquet`. CSV/TSV cells keep the
   types pandas infers (so numeric labels stay numbers); text fields are turned into
   strings by the tasks.
2. A folder written by `datasets.Dataset.save_to_disk` (a `Dataset`, or a `DatasetDict`
   whose split of the requested name is read).

`task.dataset` names a whole dataset: a `save_to_disk` folder of a `DatasetDict`, or a
Hugging Face hub dataset `"name"` or `"name:config"` (the pretraining corpus's
convention: `"glue:sst2"`, `"nyu-mll/glue:mrpc"`, `"conll2003"`, `"squad"`; a `/` is part
of the repository id), loaded with `datasets.load_dataset(name, config)`. Offline only
datasets already in the Hugging Face cache load; any failure is an InputError naming
the dataset. Its `train` split trains and its `validation` split (else
`validation_matched`, as MNLI has, else `test`) evaluates, unless `task.train_file` /
`task.validation_file` name a split themselves (with both set, the dataset is not
loaded at all: `task.dataset` then only names the GLUE task whose metrics to report).

Records keep Hugging Face `ClassLabel` integer labels as integers; their names are
returned beside the records (`Split.class_names`) so labels keep the dataset's order.
"""

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flaxft.data.hub import is_saved_dataset, load_named, load_saved, one_line
from flaxft.errors import InputError

RECORD_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
VALIDATION_SPLITS = ("validation", "validation_matched", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's examples.

    records: one dict per example, in file order.
    source: how messages name it (a path, or `dataset[split]`).
    class_names: for Hugging Face datasets, the names of each `ClassLabel` column (also
        inside sequences, e.g. CoNLL's `ner_tags`), by column name.
    """

    records: list[dict[str, Any]]
    source: str
    class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def load_splits(
    train_file: str = "", validation_file: str = "", dataset: str = ""
) -> tuple[Split, Split | None]:
    """(train, validation) splits as the module docstring resolves them. Validation is None
    when neither `validation_file` nor `dataset` provides one.

    Raises:
        InputError: no training data named, a file or dataset that cannot be read, or an
            empty split (each message names the config key and the path or dataset).
    """
    if not train_file and not dataset:
        raise InputError("fine-tuning needs task.train_file or task.dataset")
    needs_dataset = dataset and not (train_file and validation_file)
    whole = _load_dataset(dataset) if needs_dataset else None
    if train_file:
        train = read_split(train_file, "train", what="task.train_file")
    else:
        train = _dataset_split(whole, dataset, ("train",), "task.dataset")
    validation = None
    if validation_file:
        validation = read_split(validation_file, "validation", what="task.validation_file")
    elif whole is not None:
        validation = _dataset_split(
            whole, dataset, VALIDATION_SPLITS, "task.dataset", required=False
        )
    return train, validation


def read_split(source: str, split: str = "train", *, what: str = "task.train_file") -> Split:
    """Records of a file or `save_to_disk` folder (its split `split` if it holds several).

    `what` names the config key in error messages.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not is_saved_dataset(path):
            raise InputError(f"{what} {source!r} is a folder but not a saved Hugging Face dataset")
        dataset = load_saved(path, what)
        if hasattr(dataset, "keys"):  # DatasetDict
            if split not in dataset:
                raise InputError(
                    f"{what} {source!r} has no {split!r} split (has {sorted(dataset)})"
                )
            return _from_dataset(dataset[split], f"{source}[{split}]", what)
        return _from_dataset(dataset, source, what)
    if not path.is_file():
        raise InputError(f"{what} {source!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        raise InputError(
            f"{what} {source!r}: unsupported file type; expected one of {RECORD_SUFFIXES}"
        )
    try:
        records = _read_file(path, suffix)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 -- malformed files are bad input
        raise InputError(
            f"{what} {source!r} cannot be read: {type(e).__name__}: {one_line(e)}"
        ) from e
    if not records:
        raise InputError(f"{what} {source!r} is empty (no records)")
    return Split(records, str(source))


def require_fields(split: Split, fields: Sequence[str], what: Mapping[str, str]) -> None:
    """Raises an InputError naming the first of `fields` absent from `split`'s records
    (checked on every record; `what[field]` names its config key)."""
    for field in fields:
        for index, record in enumerate(split.records):
            if field not in record:
                columns = sorted(split.records[0])
                where = "" if index == 0 else f" (record {index})"
                raise InputError(
                    f"{split.source}: no column {field!r} ({what.get(field, field)}){where}; "
                    f"columns: {columns}"
                )


def _read_file(path: Path, suffix: str) -> list[dict[str, Any]]:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        import csv

        import pandas as pd

        options = {"sep": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        frame = pd.read_csv(path, keep_default_na=False, na_filter=False, **options)
        return [{k: _python(v) for k, v in row.items()} for row in frame.to_dict("records")]
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines with a .json suffix
        if data is not None:
            return _json_records(data, path)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {number} is not JSON: {e}") from e
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number} is not a JSON object")
            records.append(record)
    return records


def _json_records(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        if not isinstance(data.get("data"), list):
            return [data]
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path}: expected JSON objects (a list, or a list under 'data')")
    if data and all("paragraphs" in r for r in data):
        return _flatten_squad(data)
    return data


def _flatten_squad(articles: list[dict]) -> list[dict[str, Any]]:
    """SQuAD's nested json -> one record per question: id, title, context, question,
    answers {"text": [...], "answer_start": [...]} (Hugging Face's `squad` layout)."""
    records = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                records.append(
                    {
                        "id": qa.get("id", str(len(records))),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [a["answer_start"] for a in answers],
                        },
                    }
                )
    return records


def _python(value: Any) -> Any:
    """numpy scalars (from pandas) -> Python numbers."""
    return value.item() if isinstance(value, np.generic) else value


def _load_dataset(dataset: str):
    """A DatasetDict from a save_to_disk folder or the hub ("name" or "name:config")."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        if not is_saved_dataset(path):
            raise InputError(
                f"task.dataset {dataset!r} is a folder but not a saved Hugging Face dataset"
            )
        loaded = load_saved(path, "task.dataset")
        if not hasattr(loaded, "keys"):
            raise InputError(
                f"task.dataset {dataset!r} is a single Dataset, not a DatasetDict with splits; "
                "name it in task.train_file / task.validation_file instead"
            )
        return loaded
    return load_named(dataset, "task.dataset")


def _dataset_split(whole, dataset: str, names: Sequence[str], what: str, required: bool = True):
    name = next((n for n in names if n in whole), None)
    if name is None:
        if not required:
            return None
        raise InputError(f"{what} {dataset!r} has no {names[0]!r} split (has {sorted(whole)})")
    return _from_dataset(whole[name], f"{dataset}[{name}]", what)


def _from_dataset(dataset, source: str, what: str) -> Split:
    records = dataset.to_list()
    if not records:
        raise InputError(f"{what} {source!r} is empty (no records)")
    return Split(records, source, _class_names(dataset.features))


def _class_names(features: Mapping) -> dict[str, list[str]]:
    names = {}
    for column, feature in features.items():
        while feature is not None and not hasattr(feature, "names"):
            feature = getattr(feature, "feature", None)  # Sequence / List of ClassLabel
            if isinstance(feature, dict):
                feature = None
        if feature is not None:
            names[column] = list(feature.names)
    return names


# ----------------------------------------------------------------------------- shared helpers


def split_fields(fields: str | Sequence[str]) -> list[str]:
    """ "a,b" or ["a", "b"] -> ["a", "b"] (blank parts dropped)."""
    parts = fields.split(",") if isinstance(fields, str) else list(fields)
    return [part.strip() for part in parts if part and part.strip()]


def text_value(value: Any, source: str, field: str, index: int) -> str:
    """A text cell as a string; None or a non-scalar is an InputError naming the cell."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise InputError(f"{source}: column {field!r} of record {index} is empty")
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise InputError(f"{source}: column {field!r} of record {index} is not text: {value!r}")
