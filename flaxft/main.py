"""Entry point: flags -> config -> distributed init -> `flaxft.train.run`.

    python -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo \
        [--config.num_train_steps=200 ...]

The config is locked: overrides may only set keys that exist. Bad input exits 2 with
one line naming the field or file.
"""

import os

from flaxft import cli

cli.set_offline_defaults()

from absl import flags, logging  # noqa: E402

from flaxft.errors import EXIT_RUN_FAILED, fail  # noqa: E402
from flaxft.host_memory import exec_with_huge_pages  # noqa: E402

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0, for multi-process runs (default: $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 1)), "Processes in the run (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ.get("JAX_PROCESS_ID", 0)), "This process's index (default: $JAX_PROCESS_ID).")


def init_distributed() -> None:
    """Joins a multi-process run: explicitly when --num_processes > 1 (CPU processes talk
    over gloo), or by JAX's own cluster detection on TPU pods and SLURM jobs."""
    import jax

    if _NUM_PROCESSES.value > 1:
        if not _COORDINATOR.value:
            fail("--num_processes > 1 needs --coordinator_address (host:port of process 0)")
        if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
            fail(f"--process_id {_PROCESS_ID.value} is not in [0, {_NUM_PROCESSES.value})")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif int(os.environ.get("SLURM_NTASKS", 1)) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()


def main() -> None:
    cli.parse_flags()
    if not _WORKDIR.value:
        fail("--workdir is required")
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every file they touch at INFO
    init_distributed()
    from flaxft import checkpoint, loop, train
    from flaxft.errors import InputError

    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except InputError as e:
        fail(str(e))
    except (loop.NonFiniteLoss, checkpoint.SaveFailed) as e:
        fail(str(e), EXIT_RUN_FAILED)
    except OSError as e:  # a write of the run's files (metrics, events, plots) failed
        fail(f"{e.filename or _WORKDIR.value}: {e.strerror or e} (details in the workdir's flaxft.log)",
             EXIT_RUN_FAILED)


if __name__ == "__main__":
    exec_with_huge_pages()
    main()
