"""One process or many: the torchrun environment, the process group, and sums across processes.

``torchrun --nproc_per_node N -m deprune_onnx.finetune ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; each joins one process group (NCCL on CUDA, gloo on CPU), trains on its
1/N of every global batch under DistributedDataParallel, and only rank 0 writes files or prints. Without those
variables the command is a single process and nothing here starts a group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deprune_onnx.errors import DepruneError


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, outputs and messages."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over all processes (float64; ``values`` itself when alone)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64,
                              device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start(device: str) -> Processes:
    """Join the torchrun process group when launched by torchrun (else a single process) on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise DepruneError("--device cuda: PyTorch sees no CUDA device (use --device cpu)")
    if world == 1:
        return Processes(0, 1, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DepruneError(f"torchrun: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                               "device(s)")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(),
                     torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device("cpu"))


def finish(processes: Processes) -> None:
    """Leave the process group (a no-op for a single process)."""
    if processes.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
