"""Hugging Face datasets, the two ways flaxft names them: a folder written by
`save_to_disk`, or a hub dataset "name" / "name:config" (a `/` belongs to the repository
id, as in "nyu-mll/glue:mrpc"). Offline, only datasets already in the Hugging Face cache
load from the hub; every failure is an InputError naming the dataset and the config key."""

from pathlib import Path

from flaxft.errors import InputError


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` was written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_saved(folder: Path, what: str):
    """The `Dataset` or `DatasetDict` saved in `folder`; `what` names it in errors."""
    import datasets

    try:
        return datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 -- any failure is a bad dataset folder
        raise InputError(f"{what} {str(folder)!r}: cannot load dataset folder: {one_line(e)}") from e


def load_named(spec: str, what: str, split: str | None = None):
    """`datasets.load_dataset(name, config, split=split)` for `spec` = "name[:config]";
    `what` names the config key in errors."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 -- offline, uncached, misspelt: all bad input
        raise InputError(
            f"{what} {spec!r}: loading it with datasets.load_dataset({name!r}, {config or None!r}"
            f"{'' if split is None else f', split={split!r}'}) failed (offline, only cached datasets "
            f"load): {type(e).__name__}: {one_line(e)}"
        ) from e


def load_train_split(spec: str, what: str):
    """The `train` split of the dataset saved in folder `spec` (a `Dataset` is taken whole),
    else of the hub dataset `spec`; `what` names it in errors."""
    import datasets

    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return load_named(spec, what, split="train")
    dataset = load_saved(folder, what)
    if not isinstance(dataset, datasets.DatasetDict):
        return dataset
    if "train" not in dataset:
        raise InputError(f"dataset {spec!r} has no 'train' split (has {sorted(dataset)})")
    return dataset["train"]


def one_line(error: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    return " ".join(str(error).split())[:limit]
