"""Data-parallel training over the local GPUs (or CPU processes on gloo, for tests).

The training node's process starts one process per rank (``spawn``: the parent never touches
CUDA) and gets rank 0's result back; the rest of the Kedro run happens once, in the parent. Each
step, rank r trains on its share of the same global batch (rows ``order[r::N]`` of the epoch's
permutation); dense gradients are averaged with one flat all-reduce, and each embedding table
exchanges only the rows the step touched (an all-gather of indices and row gradients), so every
rank applies the same update and the tables stay identical without ever moving whole.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` of ``world``, on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size(devices: int | str, device_type: str) -> int:
    """How many ranks ``runtime.devices`` asks for: ``auto`` is every local GPU (1 on a CPU)."""
    if devices == "auto":
        return max(torch.cuda.device_count(), 1) if device_type == "cuda" else 1
    n = int(devices)
    if device_type == "cuda" and n > torch.cuda.device_count():
        raise ValueError(
            f"runtime.devices: {n} GPUs requested, {torch.cuda.device_count()} present"
        )
    return n


def free_port() -> int:
    """A TCP port free on this host now (for the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Environment variable: when set, every rank writes its Python stacks to stderr once after
#: that many seconds (to see where a run that does not return is waiting).
DUMP_STACKS_ENV = "REC_PIPELINE_DUMP_STACKS_AFTER_S"

#: Seconds the ranks get to tear their group down and exit once every one of them has finished
#: its work (rank 0's result is then already saved); after that they are terminated.
TEARDOWN_GRACE_S = 60.0


def launch(worker: Callable[..., Any], world: int, device_type: str, *args: Any) -> Any:
    """Run ``worker(ranks, *args)`` in ``world`` new processes; return rank 0's return value.

    A rank that raises ends the whole group (the others are terminated, no hang) and the error
    is raised here with the failing rank's traceback. Ranks that finished their work but do not
    exit within :data:`TEARDOWN_GRACE_S` (a communicator teardown that waits for ever) are
    terminated with a warning, and the result is returned all the same.
    """
    port = free_port()
    # NVLink SHARP multicast stays off: the GPUs' multicast objects are not available to us.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    with tempfile.TemporaryDirectory(prefix="rec_pipeline_ranks_") as tmp:
        folder = Path(tmp)
        ranks = mp.start_processes(
            _entry,
            args=(world, device_type, port, tmp, worker, args),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        try:
            _join(ranks, folder, world)
        except ProcessException as exc:
            raise RankFailedError(_first_failure(folder) or str(exc)) from exc
        return torch.load(folder / "rank0.pt", map_location="cpu", weights_only=False)


def _join(ranks: mp.ProcessContext, folder: Path, world: int) -> None:
    """Wait for every rank to exit; terminate them once they all finished and the grace ran out."""
    finished_at = None
    while not ranks.join(timeout=1.0):
        if finished_at is None:
            if all((folder / f"rank{r}.done").exists() for r in range(world)):
                finished_at = time.monotonic()
        elif time.monotonic() - finished_at > TEARDOWN_GRACE_S:
            log.warning(
                "The ranks finished training but did not exit within %.0f s (their process "
                "group's teardown did not return); terminating them. Rank 0's result is saved.",
                TEARDOWN_GRACE_S,
            )
            for process in ranks.processes:
                if process.is_alive():
                    process.kill()
            for process in ranks.processes:
                process.join()
            return


class RankFailedError(RuntimeError):
    """A rank of a data-parallel run raised; the message holds the first failure's traceback."""


def _first_failure(folder: Path) -> str | None:
    """The traceback of the rank that failed first: the others' errors are mostly the broken
    connections its exit left behind."""
    failures = []
    for f in folder.glob("rank*.err"):
        when, _, text = f.read_text().partition("\n")
        failures.append((float(when), f.stem, text))
    if not failures:
        return None
    _, rank, text = min(failures)
    return f"{rank} failed first:\n{text}"


def _entry(rank, world, device_type, port, folder, worker, args) -> None:
    if os.environ.get(DUMP_STACKS_ENV):
        faulthandler.dump_traceback_later(float(os.environ[DUMP_STACKS_ENV]))
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        device_id=device if device_type == "cuda" else None,
    )
    if rank != 0:
        logging.getLogger("rec_pipeline").setLevel(logging.WARNING)
    try:
        out = worker(Ranks(rank, world, device), *args)
        # No rank tears the group down while a peer may still be inside its last collective
        # (gloo aborts the peer's process then).
        dist.barrier()
        if rank == 0:
            torch.save(out, Path(folder) / "rank0.pt")
        (Path(folder) / f"rank{rank}.done").touch()  # only the teardown is left
    except BaseException:
        (Path(folder) / f"rank{rank}.err").write_text(f"{time.time()}\n{traceback.format_exc()}")
        raise
    finally:
        # Objects in reference cycles (a trainer and its step) may still hold a captured CUDA
        # graph, and NCCL's communicator teardown waits for every graph that captured it.
        gc.collect()
        dist.destroy_process_group()


class GradientExchange:
    """Averages gradients over the ranks after ``backward`` (before unscaling and clipping).

    ``dense``: parameters with dense gradients, reduced as one flat buffer (one all-reduce).
    ``sparse``: embedding tables with sparse COO gradients; each rank contributes the rows it
    touched (indices int64 [n_r], rows [n_r, C]) and every rank sums the gathered rows: the
    bytes moved scale with the rows a step touched, not with the table sizes.
    """

    def __init__(self, dense: Sequence[torch.nn.Parameter], sparse: Sequence[torch.nn.Parameter]):
        self.dense = [p for p in dense if p.requires_grad]
        self.sparse = list(sparse)
        self.world = dist.get_world_size()

    def all_reduce(self) -> None:
        self.reduce_dense()
        for p in self.sparse:
            if p.grad is not None:
                p.grad = self._reduce_rows(p.grad)

    def reduce_dense(self) -> None:
        """The dense gradients' mean over the ranks (one flat all-reduce; capturable)."""
        if not self.dense:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(self.dense, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def _reduce_rows(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.coalesce()
        idx, rows = g.indices()[0], g.values()
        idx_all, rows_all = gather_rows(idx, rows)
        total = torch.sparse_coo_tensor(idx_all.unsqueeze(0), rows_all / self.world, g.shape)
        return total.coalesce()


class StaticExchange:
    """The collectives of the static step (train/graph_step.py) with several ranks.

    Inside a CUDA graph capture every shape is fixed and equal on all ranks (the static batch
    slots are agreed by :meth:`agreed_max`), so gathers are plain all-gathers into one tensor and
    nothing is read back to the host. Outside a capture (the CPU, warm-up steps, an epoch's
    short last batch) lengths may differ between ranks and go through :func:`gather_rows`.
    """

    def __init__(self) -> None:
        self.world = dist.get_world_size()

    def agreed_max(self, values: Sequence[int], device: torch.device) -> list[int]:
        """The elementwise maximum of ``values`` over the ranks (a host read; not capturable)."""
        t = torch.tensor(list(values), dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def longest(self, n: int, device: torch.device) -> int:
        """The largest ``n`` of any rank: ``n`` itself under capture, where it is equal."""
        if _capturing(device):
            return n
        return self.agreed_max([n], device)[0]

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor concatenated over the ranks in rank order (same dim 0 within a call)."""
        if not _capturing(tensors[0].device):
            return gather_rows(*tensors)
        out = []
        for t in tensors:
            whole = t.new_empty((self.world * t.shape[0], *t.shape[1:]))
            dist.all_gather_into_tensor(whole, t.contiguous())
            out.append(whole)
        return tuple(out)

    def sum_(self, t: torch.Tensor) -> None:
        """``t`` summed over the ranks, in place."""
        dist.all_reduce(t)

    def all_true(self, flags: torch.Tensor) -> torch.Tensor:
        """Bool flags [K] true on every rank (one all-reduce of their minimum)."""
        t = flags.to(torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t > 0


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each rank's tensors (same dim 0 within a rank, any length across ranks) in
    rank order, on every rank: one all-gather of lengths, one padded all-gather per tensor."""
    device = tensors[0].device
    n = torch.tensor([tensors[0].shape[0]], device=device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = torch.cat(sizes).tolist()  # one host read for every rank's length
    longest = max(counts)
    out = []
    for t in tensors:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]))
    return tuple(out)


def all_ranks_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor, on every rank)."""
    out = t.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights on every rank (initialisation must not depend on the rank's RNG)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)
