"""Running one evaluation command as N copies (``torchrun``, SLURM ``srun`` or a SLURM array).

Every copy (rank) runs the same command; this module tells it who it is and which work items are its
own. Results go to the command's output folder through atomic writes, one file per item, so ranks never
write the same file and a rerun (with any number of ranks) skips what is finished. Only rank 0 writes the
final files (tables, summaries), after a barrier.

* :func:`world_info`: rank / world size / local rank from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
  (torchrun), else ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` (``srun``), else a SLURM array
  (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``), else one process.
* :func:`split`: a deterministic share of a list of items (round-robin, or balanced by cost).
* :class:`Dist`: the session of one command: ``share`` (this rank's pending items), ``device``,
  ``barrier``, ``item_done`` (the fault-injection test hook), ``close``.

Barrier: ``torch.distributed`` (gloo) when it is initialised -- :meth:`Dist.start` initialises it when
torchrun's rendezvous variables (``MASTER_ADDR``, ``MASTER_PORT``) are set; otherwise marker files under
``FOLDER/.dist/<run id>-w<world>/<name>/``, the run id being ``MAMBA_CLIP_RUN_ID``, ``SLURM_JOB_ID``
(one id per ``srun`` step's job) or ``TORCHELASTIC_RUN_ID``, so markers of an earlier run never count.
SLURM array tasks do not wait for each other (they may not even run at the same time): rank 0 writes the
final files only when every item is done, else it says so; rerun the command once (one process, e.g. as a
job depending on the array) to write them.

Test hook: ``MAMBA_CLIP_FAULT_AFTER_ITEMS=N`` makes rank ``MAMBA_CLIP_FAULT_RANK`` (default 1) exit with
status 17 right after finishing its N-th item (used by the tests to kill one rank midway).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, TypeVar

from mamba_clip.fileio import atomic_write_text

T = TypeVar("T")
FAULT_EXIT = 17


@dataclass(frozen=True)
class WorldInfo:
    """Who this process is: ``rank`` of ``world_size``, ``local_rank`` on its node, found via ``launcher``
    (``torchrun``, ``slurm``, ``slurm-array`` or ``single``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env.get(key, default))
    except ValueError:
        return default


def world_info(env: Optional[Mapping[str, str]] = None) -> WorldInfo:
    """Rank, world size and local rank from the launcher's environment (see the module docstring)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(_int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_RANK", 0), "torchrun")
    if _int(env, "SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in env:
        return WorldInfo(_int(env, "SLURM_PROCID", 0), _int(env, "SLURM_NTASKS", 1),
                         _int(env, "SLURM_LOCALID", 0), "slurm")  # fmt: skip
    if "SLURM_ARRAY_TASK_ID" in env and _int(env, "SLURM_ARRAY_TASK_COUNT", 1) > 1:
        rank = _int(env, "SLURM_ARRAY_TASK_ID", 0) - _int(env, "SLURM_ARRAY_TASK_MIN", 0)
        return WorldInfo(rank, _int(env, "SLURM_ARRAY_TASK_COUNT", 1), 0, "slurm-array")
    return WorldInfo()


def split(items: Sequence[T], rank: int, world_size: int, cost: Optional[Callable[[T], float]] = None,
          contiguous: bool = False) -> List[T]:  # fmt: skip
    """This rank's share of ``items`` (every rank must pass the same list, in the same order).

    Default: round-robin (item ``i`` goes to rank ``i % world_size``). ``contiguous``: consecutive blocks of
    near-equal length (e.g. to load each model on few ranks). ``cost``: greedy longest-first onto the least
    loaded rank (ties: lowest rank, then list order), so a few large items spread out. The share keeps the
    order of ``items``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    n = len(items)
    if cost is not None:
        load = [0.0] * world_size
        owner = [0] * n
        for i in sorted(range(n), key=lambda i: (-float(cost(items[i])), i)):
            r = min(range(world_size), key=lambda r: (load[r], r))
            owner[i] = r
            load[r] += float(cost(items[i]))
        return [items[i] for i in range(n) if owner[i] == rank]
    if contiguous:
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        return list(items[lo:hi])
    return list(items[rank::world_size])


def device_for(device: str, info: WorldInfo) -> str:
    """``cuda`` (no index) becomes ``cuda:LOCAL_RANK`` when there are several ranks; anything else is kept."""
    if device == "cuda" and info.world_size > 1:
        return f"cuda:{info.local_rank}"
    return device


def run_id(env: Optional[Mapping[str, str]] = None) -> str:
    """The id shared by the ranks of one launch (names the folder-barrier markers)."""
    env = os.environ if env is None else env
    for key in ("MAMBA_CLIP_RUN_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if env.get(key):
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in env[key])
    return "default"


class Dist:
    """One command's view of the ranks. ``Dist.start(folder)`` at the start of a command, ``close()`` at
    its end; with one process every method is a cheap no-op."""

    def __init__(self, info: WorldInfo, folder, owns_group: bool = False):
        self.info, self.folder, self._owns_group = info, Path(folder), owns_group
        self._items_done = 0
        self.poll_s = float(os.environ.get("MAMBA_CLIP_BARRIER_POLL_S", "0.2"))

    @classmethod
    def start(cls, folder, info: Optional[WorldInfo] = None) -> "Dist":
        """Find the rank; under torchrun (``MASTER_ADDR``/``MASTER_PORT`` set, several ranks) initialise a
        gloo process group for the barriers, unless one is initialised already."""
        info = info or world_info()
        owns = False
        if info.world_size > 1 and info.launcher != "slurm-array" and "MASTER_ADDR" in os.environ \
                and "MASTER_PORT" in os.environ:  # fmt: skip
            import torch.distributed as td

            if td.is_available() and not td.is_initialized():
                hours = float(os.environ.get("MAMBA_CLIP_DIST_TIMEOUT_H", "72"))  # a barrier waits for the slowest
                td.init_process_group("gloo", rank=info.rank, world_size=info.world_size,
                                      timeout=timedelta(hours=hours))  # fmt: skip
                owns = True
        return cls(info, folder, owns)

    # ------------------------------------------------------------------------------------ properties
    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    @property
    def waits(self) -> bool:
        """Whether the ranks wait for each other (not in a SLURM array)."""
        return self.info.world_size > 1 and self.info.launcher != "slurm-array"

    def device(self, device: str) -> str:
        return device_for(device, self.info)

    @staticmethod
    def _group():
        try:
            import torch.distributed as td
        except ImportError:  # pragma: no cover
            return None
        return td if td.is_available() and td.is_initialized() else None

    # ------------------------------------------------------------------------------------------ work
    def share(self, items: Sequence[T], done: Callable[[T], bool], cost: Optional[Callable[[T], float]] = None,
              contiguous: bool = False) -> List[T]:  # fmt: skip
        """This rank's items that are not ``done``.

        With a process group, rank 0 lists the pending items and sends the list to all, so a resumed run
        spreads the remaining work evenly. Without one (ranks may start at different times while others
        already write results), every rank splits the whole list -- the same list whatever is finished --
        then drops its finished items."""
        if self.info.world_size == 1:
            return [x for x in items if not done(x)]
        td = self._group()
        if td is not None:
            pending = [[i for i, x in enumerate(items) if not done(x)] if self.is_main else None]
            td.broadcast_object_list(pending, src=0)
            todo = [items[i] for i in pending[0]]
            return split(todo, self.rank, self.world_size, cost, contiguous)
        return [x for x in split(items, self.rank, self.world_size, cost, contiguous) if not done(x)]

    def item_done(self) -> None:
        """Count a finished item (the ``MAMBA_CLIP_FAULT_AFTER_ITEMS`` test hook lives here)."""
        self._items_done += 1
        after = os.environ.get("MAMBA_CLIP_FAULT_AFTER_ITEMS")
        if after and self.rank == int(os.environ.get("MAMBA_CLIP_FAULT_RANK", "1")) \
                and self._items_done >= int(after):  # fmt: skip
            print(f"rank {self.rank}: MAMBA_CLIP_FAULT_AFTER_ITEMS={after} reached, exiting (test hook)",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(FAULT_EXIT)

    # --------------------------------------------------------------------------------------- barrier
    def barrier(self, name: str, timeout: Optional[float] = None) -> bool:
        """Wait until every rank got here. True when they did; False in a SLURM array (no waiting) or
        after ``timeout`` seconds (folder barrier only)."""
        if self.info.world_size == 1:
            return True
        if not self.waits:
            return False
        td = self._group()
        if td is not None:
            td.barrier()
            return True
        where = self.folder / ".dist" / f"{run_id()}-w{self.world_size}" / name
        atomic_write_text(where / f"rank{self.rank}", f"{os.getpid()} {time.time()}\n")
        t0 = time.monotonic()
        while True:
            if all((where / f"rank{r}").is_file() for r in range(self.world_size)):
                return True
            if timeout is not None and time.monotonic() - t0 > timeout:
                return False
            time.sleep(self.poll_s)

    def close(self) -> None:
        """Leave the process group this session initialised."""
        td = self._group()
        if td is not None and self._owns_group:
            td.destroy_process_group()
            self._owns_group = False


__all__ = ["WorldInfo", "world_info", "split", "device_for", "run_id", "Dist", "FAULT_EXIT"]
