"""Collectives for contrastive training and sharded evaluation; every function also works without a process group.

Training: `gather_with_grad` concatenates each process's features over all processes so that negatives span the
global batch, and lets gradients flow back through the gather (`torch.distributed.nn.functional.all_gather`;
`accelerate`'s gather carries no gradient). Its backward sums, over processes, the gradients every process's loss
sends to a given process's rows. Hence, for a loss `L` computed identically on every process (the full form), the
gradient reaching process `p`'s features is `world_size * dL/df_p`; DDP's averaging of parameter gradients over
`world_size` processes divides that back, so the update equals single-process training on the concatenated batch.
The local form (`training.losses.ocl_loss(local_loss=True)`) relies on the same argument.

Evaluation: `shard_range` gives every process a contiguous block of item indices (every item exactly once, no
padding), and `gather_uneven` concatenates blocks of different lengths, empty ones included, in rank order.
"""

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def world_size() -> int:
    """Number of processes in the default group; 1 when no process group is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group; 0 when no process group is initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _gather_sizes(num_rows: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([num_rows], dtype=torch.long, device=device))
    return [int(size.item()) for size in sizes]


def gather_with_grad(features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Concatenate every tensor over processes in rank order, differentiably.

    Args:
        features: tensors of shape `(n, ...)` with the same `n` (this process's batch); `n` may differ
            between processes (e.g. a short last batch).

    Returns:
        The gathered tensors, each `(sum of n over processes, ...)`, and the offset of this process's rows in
        them. Without a process group (or with one process) the input is returned unchanged with offset 0.
    """
    if world_size() == 1:
        return dict(features), 0
    num_rows = {tensor.shape[0] for tensor in features.values()}
    if len(num_rows) != 1:
        raise ValueError(f"all sources need the same number of rows, got {sorted(num_rows)}")
    (local_rows,) = num_rows
    sizes = _gather_sizes(local_rows, next(iter(features.values())).device)
    longest = max(sizes)
    gathered = {}
    for name, tensor in features.items():
        # all_gather needs equal shapes: pad to the longest batch, then drop the padding of every block.
        padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, longest - local_rows))
        with warnings.catch_warnings():
            # torch 2.13 deprecates it for a private module; it is the public gather that carries gradients.
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated")
            blocks = dist_nn.all_gather(padded)
        gathered[name] = torch.cat([block[:size] for block, size in zip(blocks, sizes)])
    return gathered, sum(sizes[: rank()])


def shard_range(num_items: int) -> range:
    """This process's contiguous block of `range(num_items)`; the blocks of all processes cover it exactly once.

    Block sizes differ by at most one and can be empty (more processes than items).
    """
    world, this_rank = world_size(), rank()
    return range(this_rank * num_items // world, (this_rank + 1) * num_items // world)


@torch.no_grad()
def gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate, in rank order, blocks whose first dimension differs between processes (no gradient).

    Every process must call this once per tensor, whatever its number of rows, so a process with fewer (or no)
    items never leaves the others waiting. An empty block may have any shape with `shape[0] == 0` (e.g.
    `torch.empty(0)` on this process's device): trailing shape and dtype are taken from the non-empty blocks.
    Compute the features with the unwrapped model: a DDP-wrapped forward may itself communicate, and then an
    uneven number of batches would hang.
    """
    if world_size() == 1:
        return tensor
    layouts: list[tuple | None] = [None] * world_size()
    local_layout = (tensor.shape[0], tuple(tensor.shape[1:]), tensor.dtype) if tensor.shape[0] else (0, None, None)
    dist.all_gather_object(layouts, local_layout)
    sizes = [size for size, _, _ in layouts]
    filled = [(shape, dtype) for size, shape, dtype in layouts if size]
    if not filled:
        return tensor
    trailing, dtype = filled[0]
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *trailing), dtype=dtype)
    padded[: tensor.shape[0]] = tensor.reshape(tensor.shape[0], *trailing)
    blocks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(blocks, padded)
    return torch.cat([block[:size] for block, size in zip(blocks, sizes)])
