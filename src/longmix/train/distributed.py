"""Scale-out on torch.distributed: FSDP2 over all ranks, context parallelism inside a node.

The training loop sees a :class:`Dist` and calls :func:`wrap`; it never touches process
groups. Under ``torchrun`` the ranks form a 2-D device mesh ``(dp, cp)``: parameters are
sharded over all ranks (FSDP2 ``fully_shard``, bf16 compute, fp32 gradient reduction);
each group of ``cp`` ranks shares one sequence, split head-and-tail so that every rank
does the same causal work, and all-gathers the keys and values inside attention.
The same code runs on one host or many (``torchrun --nnodes N --rdzv-endpoint ...``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidInputError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cp: int = 1  # ranks that share one sequence
    device: torch.device = torch.device("cpu")
    mesh: object | None = None

    @property
    def dp(self) -> int:
        return self.world // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp

    @property
    def cp_group(self):
        return self.mesh["cp"].get_group() if self.mesh is not None and self.cp > 1 else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(context_parallel: int = 1, device: str = "auto") -> Dist:
    """Join the torchrun job if there is one; pick the device; build the (dp, cp) mesh."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if context_parallel != 1:
            raise InvalidInputError(
                "--context-parallel needs several processes: launch with torchrun --nproc-per-node N"
            )
        return Dist(device=torch.device(device, 0) if device == "cuda" else torch.device(device))
    if world % context_parallel:
        raise InvalidInputError(
            f"{world} ranks cannot be split into context-parallel groups of {context_parallel}"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(
        device, (world // context_parallel, context_parallel), mesh_dim_names=("dp", "cp")
    )
    torch_device = torch.device(device, local_rank) if device == "cuda" else torch.device(device)
    return Dist(rank, world, local_rank, context_parallel, torch_device, mesh)


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """FSDP2 over every rank: each decoder layer, then the root (embeddings, norm, LM head)."""
    if d.world == 1:
        return module
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = d.mesh["dp", "cp"]._flatten("dp_cp") if d.cp > 1 else d.mesh["dp"]
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in module.model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(value)
    return value


def close(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- context parallel


def cp_chunks(length: int, cp: int, cp_rank: int) -> list[tuple[int, int]]:
    """Head-and-tail split: rank r holds chunks r and 2·cp−1−r of 2·cp equal chunks.

    Causal attention costs more for later positions; pairing an early chunk with a late
    one gives every rank the same work.
    """
    if length % (2 * cp):
        raise InvalidInputError(
            f"sequence length {length} must be divisible by 2 × context parallel ({2 * cp})"
        )
    size = length // (2 * cp)
    return [
        (cp_rank * size, (cp_rank + 1) * size),
        ((2 * cp - 1 - cp_rank) * size, (2 * cp - cp_rank) * size),
    ]


def cp_shard(tensor: torch.Tensor, cp: int, cp_rank: int, dim: int = -1) -> torch.Tensor:
    """This rank's part of a full-sequence tensor (input ids, labels, positions)."""
    parts = [tensor.narrow(dim, a, b - a) for a, b in cp_chunks(tensor.shape[dim], cp, cp_rank)]
    return torch.cat(parts, dim=dim)


def _gather_sequence(local: torch.Tensor, cp: int, group) -> torch.Tensor:
    """All ranks' head-and-tail shards (dim 2 = sequence) back in sequence order, with gradients."""
    import torch.distributed._functional_collectives as collectives

    # autograd-aware all-gather (the backward reduce-scatters gradients to their owners);
    # its name changed in torch 2.13
    gather = (
        getattr(collectives, "all_gather_single_autograd", None)
        or collectives.all_gather_tensor_autograd
    )
    pieces = gather(local.contiguous(), gather_dim=0, group=group).chunk(cp, dim=0)
    half = local.shape[2] // 2
    heads = [p[:, :, :half] for p in pieces]
    tails = [p[:, :, half:] for p in reversed(pieces)]
    return torch.cat(heads + tails, dim=2)
