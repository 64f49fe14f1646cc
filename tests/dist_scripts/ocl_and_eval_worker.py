"""Worker for tests/test_distributed.py, launched with `torchrun --nproc_per_node 2` (gloo, CPU).

Every process builds the same global batch from one seed, keeps its own rows, and compares what the collectives
give against the single-process computation on the whole batch. Writes `{check: "ok" or the failure}` as JSON to
`<output_dir>/rank<r>.json`.
"""

import json
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.distributed import gather_uneven, shard_range
from training.losses import ocl_loss
from training.retrieval import retrieval_metrics

SOURCES = ("video", "frame", "text", "caption")
DIM = 8


def global_features(num_rows: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: F.normalize(torch.randn(num_rows, DIM, generator=generator, dtype=torch.float64), dim=-1)
            for name in SOURCES}


def own_rows(sizes: list[int]) -> slice:
    start = sum(sizes[: dist.get_rank()])
    return slice(start, start + sizes[dist.get_rank()])


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """What DDP does to parameter gradients."""
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def check_gathered_loss_and_feature_gradients(local_loss: bool) -> None:
    """Loss and gradients w.r.t. each process's features equal the single-process ones on the whole batch.

    The gradient reaching a process's features is world_size times the single-process one (the gather's backward
    sums every process's loss); DDP's averaging divides it back (see check_ddp_parameter_gradients).
    """
    world = dist.get_world_size()
    for sizes in ([3, 3], [3, 2]):
        for combination in ("v-sc,f-c", "v-s", "v-c,f-c"):
            everything = global_features(sum(sizes), seed=sum(sizes))
            single = {name: tensor.clone().requires_grad_() for name, tensor in everything.items()}
            single_scale = torch.tensor(3.2, dtype=torch.float64, requires_grad=True)
            single_loss = ocl_loss(single, single_scale, combination, gather=False)
            single_loss.backward()

            rows = own_rows(sizes)
            local = {name: tensor[rows].clone().requires_grad_() for name, tensor in everything.items()}
            scale = torch.tensor(3.2, dtype=torch.float64, requires_grad=True)
            loss = ocl_loss(local, scale, combination, local_loss=local_loss)
            loss.backward()

            where = f"sizes {sizes}, {combination}"
            if local_loss:
                torch.testing.assert_close(mean_over_processes(loss), single_loss.detach(), msg=where)
                torch.testing.assert_close(mean_over_processes(scale.grad), single_scale.grad, msg=where)
            else:
                torch.testing.assert_close(loss, single_loss, msg=where)
                torch.testing.assert_close(scale.grad, single_scale.grad, msg=where)
            for name, tensor in local.items():
                if single[name].grad is None:
                    assert tensor.grad is None, f"{name} got a gradient it should not ({where})"
                else:
                    torch.testing.assert_close(tensor.grad, world * single[name].grad[rows], msg=f"{name}, {where}")


def check_ddp_parameter_gradients(local_loss: bool) -> None:
    """A shared projection's gradients, averaged over processes as DDP does, equal single-process gradients."""
    sizes = [4, 3]
    generator = torch.Generator().manual_seed(7)
    inputs = {name: torch.randn(sum(sizes), 5, generator=generator, dtype=torch.float64) for name in SOURCES}
    projection = torch.nn.Linear(5, DIM, dtype=torch.float64)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(DIM, 5, generator=generator))
        projection.bias.copy_(torch.randn(DIM, generator=generator))
    scale = torch.nn.Parameter(torch.tensor(2.5, dtype=torch.float64))
    parameters = [projection.weight, projection.bias, scale]

    def loss_on(rows: slice, gather: bool) -> torch.Tensor:
        features = {name: F.normalize(projection(x[rows]), dim=-1) for name, x in inputs.items()}
        return ocl_loss(features, scale, "v-sc,f-c", gather=gather, local_loss=local_loss)

    single_grads = torch.autograd.grad(loss_on(slice(None), gather=False), parameters)
    process_grads = torch.autograd.grad(loss_on(own_rows(sizes), gather=True), parameters)
    for single, ours in zip(single_grads, process_grads):
        torch.testing.assert_close(mean_over_processes(ours), single)


def check_sharded_evaluation_covers_every_item_once() -> None:
    """Odd-sized text and video sets split over two processes: every item once, metrics as in one process."""
    generator = torch.Generator().manual_seed(11)
    num_texts, num_videos = 7, 5
    text_inputs = torch.randn(num_texts, 6, generator=generator)
    video_inputs = torch.randn(num_videos, 6, generator=generator)
    text_to_video = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    encoder = torch.nn.Linear(6, DIM)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(DIM, 6, generator=generator))
        encoder.bias.copy_(torch.randn(DIM, generator=generator))

    gathered = {}
    for name, inputs in (("text", text_inputs), ("video", video_inputs)):
        shard = shard_range(len(inputs))
        ids = gather_uneven(torch.tensor(list(shard), dtype=torch.long))
        assert ids.tolist() == list(range(len(inputs))), f"{name} items evaluated: {ids.tolist()}"
        with torch.no_grad():
            gathered[name] = gather_uneven(encoder(inputs[shard.start : shard.stop]))
        torch.testing.assert_close(gathered[name], encoder(inputs).detach())

    sharded = retrieval_metrics(gathered["text"], gathered["video"], text_to_video, dsl=True)
    with torch.no_grad():
        single = retrieval_metrics(encoder(text_inputs), encoder(video_inputs), text_to_video, dsl=True)
    assert sharded == single, (sharded, single)


def check_empty_shard_does_not_hang() -> None:
    """One item over two processes: the process without items still joins the gather, with a bare empty tensor."""
    shard = shard_range(1)
    assert len(shard) == (1 if dist.get_rank() == dist.get_world_size() - 1 else 0)
    block = torch.full((1, 3), 5.0, dtype=torch.float64) if len(shard) else torch.empty(0)
    torch.testing.assert_close(gather_uneven(block), torch.full((1, 3), 5.0, dtype=torch.float64))


CHECKS = {
    "full_loss_gradients": lambda: check_gathered_loss_and_feature_gradients(local_loss=False),
    "local_loss_gradients": lambda: check_gathered_loss_and_feature_gradients(local_loss=True),
    "ddp_gradients_full": lambda: check_ddp_parameter_gradients(local_loss=False),
    "ddp_gradients_local": lambda: check_ddp_parameter_gradients(local_loss=True),
    "sharded_evaluation": check_sharded_evaluation_covers_every_item_once,
    "empty_shard": check_empty_shard_does_not_hang,
}


def main(output_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    (output_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
