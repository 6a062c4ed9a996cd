"""Several training processes: which one talks, and `accelerate launch --cpu` made to mean what it says.

torchrun (`torch.distributed.run`) starts N ranks itself, on CPUs (gloo) as on GPUs, and sets
RANK / WORLD_SIZE / MASTER_ADDR for each; accelerate reads those. `accelerate launch --cpu
--num_processes N` is the one launcher that does not: without MPI its simple launcher starts ONE
process (measured with accelerate 1.15), leaving MASTER_ADDR set and no WORLD_SIZE, so that
process would train alone while the user asked for N. dfedit-train then hands the same command to
torchrun with N ranks rather than starting processes of its own.
"""

from __future__ import annotations

import os
import sys

from dfedit.errors import DfeditError

# Set by every launcher that has started more than one process (torchrun, MPI).
_RANKED = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def is_rank0() -> bool:
    """Rank 0 of a multi-process run (or the only process): the one that talks and holds the lock."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def accelerate_cpu_processes() -> int:
    """The N of `accelerate launch --cpu --num_processes N` when accelerate started one process for
    it (0 if its command line cannot be read); 1 in every other situation. N is read from the
    launcher's own command line with accelerate's own parser: the launcher passes it on nowhere else."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes") or "MASTER_ADDR" not in env:
        return 1
    if any(k in env for k in _RANKED):
        return 1
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        at = next(i for i, a in enumerate(argv) if a == "launch" or a.endswith("accelerate.commands.launch")
                  or a.endswith(os.path.join("commands", "launch.py")))
        from accelerate.commands.launch import launch_command_parser
        ns, _ = launch_command_parser().parse_known_args(argv[at + 1:])
        return int(ns.num_processes or 0)
    except (OSError, ValueError, SystemExit, UnicodeDecodeError, StopIteration):
        return 0


def relaunch_under_torchrun() -> None:
    """Turn the one process of `accelerate launch --cpu --num_processes N` into torchrun's N gloo
    ranks running the same command (exec: this process becomes torchrun); nothing otherwise."""
    n = accelerate_cpu_processes()
    if n == 1:
        return
    if n < 1:
        raise DfeditError("accelerate launch --cpu started a single process (without MPI it does not start more): "
                          "run torchrun --nproc_per_node N -m dfedit_train.cli emoji ... for N processes on the CPU")
    # --standalone: torchrun picks a free local port and sets MASTER_ADDR/PORT for its ranks itself;
    # accelerate's (for the process group it never started) must not reach them.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "dfedit_train.cli", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(sys.executable, argv, env)
