"""Prepares a pretraining run's corpus ahead of training, on this machine or on many.

    python -m flaxft.prepare_corpus --config configs/X.py --workdir DIR [--part I/N] [--config.KEY=VALUE ...]

Writes the chunks (tokens and rows, `flaxft.data.prepare`) that
`python -m flaxft.main` with the same config and workdir will read into the cache
(`config.data.cache_dir`, else WORKDIR/cache), with one worker process per core
(`config.data.workers`) and a progress line every 10 s. Training then reads no text.

`--part I/N` prepares every N-th chunk from the I-th (0 <= I < N): run parts 0/N ... N-1/N
on N machines that share the cache folder (a job array, or one Apache Beam / Spark task
each), then train on any number of processes. Chunks depend on `config.data.streams`
(0: one per training process, which this command cannot know: it is then 1), so set it
to the training job's value when that runs on several processes. Without
`config.data.tokenizer`, the tokenizer is trained on the corpus's sample and written to
WORKDIR/tokenizer, where the training run finds it (give every part the same one).
Bad input exits 2 with one line.
"""

import re
import sys

from flaxft import cli

cli.set_offline_defaults()

from absl import flags, logging  # noqa: E402

from flaxft.errors import fail  # noqa: E402

cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir (the tokenizer and default cache).")
_PART = flags.DEFINE_string("part", "0/1", "I/N: prepare chunks I, I + N, I + 2N, ... of every stream's chunks.")


def prepare(config, workdir: str, part: int, parts: int) -> int:
    """Prepares part `part` of `parts` of the corpus; returns the number of chunks."""
    from pathlib import Path

    from flaxft import data, pretrain
    from flaxft.data.tokenizer import write_workdir_tokenizer
    from flaxft.models import family_named

    workdir = Path(workdir)
    tokenizer, write_tokenizer = pretrain.tokenizer_of(config, workdir, family_named(config.model.family).tokenizer)
    if write_tokenizer is not None and not config.data.tokenizer:
        workdir.mkdir(parents=True, exist_ok=True)
        write_workdir_tokenizer(workdir, write_tokenizer)
    chunks = pretrain.corpus_plan(config, config.data.streams or 1)
    jobs = [(k, i, chunk) for k, stream in enumerate(chunks) for i, chunk in enumerate(stream)][part::parts]
    preparation = data.Preparation(jobs, pretrain.recipe_of(config, tokenizer), pretrain.cache_dir_of(config, workdir),
                                   config.data.workers, show_progress=True)
    try:
        for stream, index, _ in jobs:
            preparation.wait(stream, index)
    finally:
        preparation.close()
    return len(jobs)


def main() -> None:
    config = cli.parse_flags(__doc__)
    if not _WORKDIR.value:
        fail("--workdir is required")
    match = re.fullmatch(r"(\d+)/(\d+)", _PART.value)
    if not match or not int(match[1]) < int(match[2]):
        fail(f"--part must be I/N with 0 <= I < N, got {_PART.value!r}")
    logging.set_verbosity(logging.WARNING)
    from flaxft import config as config_lib
    from flaxft.errors import InputError

    try:
        config_lib.validate(config)
        count = prepare(config, _WORKDIR.value, int(match[1]), int(match[2]))
    except InputError as e:
        fail(str(e))
    print(f"prepared {count} chunks (part {_PART.value})")
    sys.exit(0)


if __name__ == "__main__":
    main()
