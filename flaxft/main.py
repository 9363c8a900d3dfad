"""Trains as a config says: pretraining, or fine-tuning when config.task.name names a task.

    python -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo [--config.KEY=VALUE ...]

The config is locked: overrides may only set keys that exist (flaxft/config.py lists them
with their defaults). The same command on the same workdir resumes from its newest
checkpoint; one run at a time holds a workdir. Ctrl-C (or SIGTERM) finishes the step,
saves and stops (exit 130; SIGTERM exits 0); a second Ctrl-C stops at once. Bad input
exits 2 with one line naming the field or file; a failure at run time (a non-finite loss,
a checkpoint that could not be written) exits 1 with one line, its details in
WORKDIR/flaxft.log.
"""

import os
import sys

from flaxft import cli

cli.set_offline_defaults()

from absl import flags, logging  # noqa: E402

from flaxft.errors import EXIT_RUN_FAILED, fail  # noqa: E402
from flaxft.host_memory import exec_with_huge_pages  # noqa: E402

cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0, for multi-process runs ($JAX_COORDINATOR_ADDRESS when set).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 1)), "Processes in the run ($JAX_NUM_PROCESSES when set).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ.get("JAX_PROCESS_ID", 0)), "This process's index ($JAX_PROCESS_ID when set).")


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
        cli.drop_console_lines(b"[Gloo] ")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif int(os.environ.get("SLURM_NTASKS", 1)) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()


def main() -> None:
    config = cli.parse_flags(__doc__)
    if not _WORKDIR.value:
        fail("--workdir is required")
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every file they touch at INFO
    init_distributed()
    from flaxft import checkpoint, loop, preemption, train
    from flaxft.errors import InputError

    try:
        train.run(config, _WORKDIR.value)
    except InputError as e:
        fail(str(e))
    except preemption.Interrupted:
        sys.exit(preemption.EXIT_INTERRUPTED)  # the loop said where it stopped
    except KeyboardInterrupt:
        fail("interrupted; nothing more was saved (the same command resumes from the newest checkpoint)",
             preemption.EXIT_INTERRUPTED)
    except (loop.NonFiniteLoss, checkpoint.SaveFailed) as e:
        fail(str(e), EXIT_RUN_FAILED)
    except OSError as e:  # a write of the run's files (metrics, events, plots) failed
        fail(f"{e.filename or _WORKDIR.value}: {e.strerror or e} (details in the workdir's flaxft.log)",
             EXIT_RUN_FAILED)


if __name__ == "__main__":
    exec_with_huge_pages()
    main()
