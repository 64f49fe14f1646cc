"""One ClipVipTrainer step (SGD, no clipping) on a fixed 4-clip global batch; saves the parameters per process.

Run with `torchrun --nproc_per_node N` (N = 1 or 2): the global batch is always the same 4 clips, split over
the processes. Usage: trainer_step_worker.py OUTPUT_DIR OCL LOCAL_LOSS
"""

import os
import sys

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from training.trainer import ClipVipTrainer, ClipVipTrainingArguments

GLOBAL_BATCH = 4


class FixedClips(Dataset):
    """Four random clips with all four OCL sources, the same in every process."""

    def __init__(self, config: ClipVipConfig):
        generator = torch.Generator().manual_seed(123)
        size = config.vision_config.image_size
        self.items = [
            {
                "pixel_values": torch.randn(3, 3, size, size, generator=generator),
                "frame_pixel_values": torch.randn(1, 3, size, size, generator=generator),
                "input_ids": torch.cat([torch.randint(1, 900, (7,), generator=generator), torch.tensor([999])]),
                "attention_mask": torch.ones(8, dtype=torch.long),
                "caption_input_ids": torch.cat([torch.randint(1, 900, (5,), generator=generator), torch.tensor([999, 0, 0])]),
                "caption_attention_mask": torch.tensor([1, 1, 1, 1, 1, 1, 0, 0]),
            }
            for _ in range(GLOBAL_BATCH)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def main() -> None:
    output_dir, ocl, local_loss = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = ClipVipConfig.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "..", "hub_configs", "clip-vip-tiny"))
    config.vision_config.image_size = 32
    torch.manual_seed(0)
    model = ClipVipModel(config)
    args = ClipVipTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=GLOBAL_BATCH // world_size,
        max_steps=1,
        optim="sgd",
        learning_rate=0.01,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        ocl=ocl,
        local_loss=local_loss,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_num_workers=0,
        seed=0,
    )
    if args.process_index == 0:
        save_file({n: p.detach().clone() for n, p in model.named_parameters()}, os.path.join(output_dir, "initial.safetensors"))
    trainer = ClipVipTrainer(model=model, args=args, train_dataset=FixedClips(config))
    trainer.train()
    state = {name: param.detach().contiguous() for name, param in trainer.model.named_parameters()}
    save_file(state, os.path.join(output_dir, f"world{world_size}_rank{args.process_index}.safetensors"))


if __name__ == "__main__":
    main()
