"""The `clip-vip` entry point and the authors' recipes as argument files."""

from pathlib import Path

import pytest
from transformers import HfArgumentParser

from training.cli import ARGS_FILE_FLAG, SUBCOMMANDS, main
from training.train import DataArguments, ModelArguments
from training.trainer import ClipVipTrainingArguments

RECIPES = Path(__file__).resolve().parents[1] / "hub_configs" / "recipes"


def parse_recipe(name: str, *extra: str):
    parser = HfArgumentParser((ModelArguments, DataArguments, ClipVipTrainingArguments))
    argv = [ARGS_FILE_FLAG, str(RECIPES / name), "--output_dir", "unused", "--use_cpu", "--fp16", "False", *extra]
    return parser.parse_args_into_dataclasses(args=argv, args_file_flag=ARGS_FILE_FLAG, look_for_args_file=False)


def test_post_pretraining_recipe_has_the_authors_settings():
    model_args, data_args, args = parse_recipe("post_pretrain_b32.args")
    assert (model_args.config_name, args.ocl, args.ocl_reduction) == ("clip-vip-base-patch32", "v-sc,f-c", "sum")
    assert (data_args.num_frames, data_args.max_text_length, args.per_device_train_batch_size) == (12, 70, 32)
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2) == (5e-6, 0.05, 0.9, 0.98)
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.max_grad_norm) == ("cosine", 0.01, 5.0)


def test_fine_tuning_recipe_has_the_authors_settings_and_command_line_overrides_win():
    _, data_args, args = parse_recipe("finetune_msrvtt_b32.args", "--learning_rate", "2e-6")
    assert (args.ocl, data_args.max_text_length, args.per_device_train_batch_size) == ("v-s", 50, 16)
    assert (args.weight_decay, args.max_grad_norm, args.learning_rate) == (0.2, 1.0, 2e-6)


def test_help_lists_every_subcommand_and_an_unknown_one_is_refused(capsys):
    main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in SUBCOMMANDS)
    with pytest.raises(SystemExit, match="unknown subcommand 'trian'"):
        main(["trian"])


def test_unknown_ocl_term_is_refused_before_training():
    with pytest.raises(ValueError, match="v-x"):
        ClipVipTrainingArguments(output_dir="unused", ocl="v-s,v-x", use_cpu=True)
