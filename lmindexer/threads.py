"""How many threads one task of parallel work gives torch and the BLAS/OpenMP pools.

torch (and NumPy's BLAS, faiss's OpenMP) start one thread per core of the machine in every process. Where several
tasks run at once on the same cores (the mapped ``assign_shard`` tasks of a reindex run, the models of a serving
process) each one would start as many threads as there are cores, and oversubscribed threads fight for them and run
several times slower than one thread each. So a task takes its share of the cores it may use:

1. ``LMINDEXER_THREADS``, when set, is the number of threads of every such task (the knob for a deployment whose
   workers know their own sizing);
2. otherwise the cores this process may run on (``os.sched_getaffinity``, which honours ``taskset`` and cgroup
   cpusets but not a CPU quota such as a container's ``--cpus``) divided by the tasks that share them, at least 1;
3. an explicit ``OMP_NUM_THREADS`` caps the result: whoever set it asked for no more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from lmindexer.errors import ConfigError

THREADS_ENV = "LMINDEXER_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive(value: str, name: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{name} must be a whole number of threads, 1 or more; got {value!r}")
    return number


def threads_per_task(tasks_at_once: int = 1, *, environ: Mapping[str, str] | None = None) -> int:
    """Threads for one of ``tasks_at_once`` tasks sharing this process's cores (see the module's rules)."""
    env = os.environ if environ is None else environ
    explicit = env.get(THREADS_ENV, "").strip()
    if explicit:
        return _positive(explicit, THREADS_ENV)
    if isinstance(tasks_at_once, bool) or not isinstance(tasks_at_once, int) or tasks_at_once < 1:
        raise ConfigError(f"tasks sharing the cores must be a whole number, 1 or more; got {tasks_at_once!r}")
    threads = max(1, available_cores() // tasks_at_once)
    cap = env.get("OMP_NUM_THREADS", "").strip()
    if cap.isdigit() and int(cap) >= 1:
        threads = min(threads, int(cap))
    return threads


def set_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads for the rest of the process (a serving process)."""
    import torch

    torch.set_num_threads(_positive(str(threads), "threads"))


@contextmanager
def limited_threads(threads: int) -> Iterator[int]:
    """Run the block with torch's intra-op threads and the BLAS/OpenMP pools at ``threads``; restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = _positive(str(threads), "threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield threads
    finally:
        torch.set_num_threads(previous)


__all__ = ["THREADS_ENV", "available_cores", "limited_threads", "set_threads", "threads_per_task"]
