"""`llama-course pretrain`: pretrain a Llama on a corpus (`training.pretrain` holds the config and the run).

    llama-course pretrain --config tiny.toml --set trainer.steps=2000
    torchrun --nproc_per_node 8 -m llama_course.cli pretrain --config big.toml --set trainer.parallelism=fsdp
"""

import argparse
import json

from llama_course.config import PRESETS
from llama_course.config_files import add_config_arguments, flag_settings, load_config
from llama_course.experiments.toyworld_data import pretraining_data
from llama_course.training.pretrain import PretrainConfig, run_pretraining


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course pretrain` flags; every config key is also settable with --set section.key=value."""
    add_config_arguments(parser, PretrainConfig(), name="pretraining config",
                         notes={"model": 'model.preset = "tiny", then any ModelConfig field, e.g. model.dim = 256'})
    parser.add_argument("--output-dir", help="run directory: checkpoints, metrics.jsonl, metrics.png")
    parser.add_argument("--preset", help=f"model preset, one of {', '.join(PRESETS)}")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="sequences per process per micro-batch")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--block-size", type=int, help="tokens per training sequence")
    parser.add_argument("--device", help="auto, cpu, cuda, mps")
    parser.add_argument("--parallelism", choices=["auto", "none", "ddp", "fsdp"], help="multi-process strategy")
    parser.add_argument("--tensor-parallel", type=int, metavar="N",
                        help="split every weight matrix over N processes (tensor + sequence parallelism); the "
                             "data-parallel degree is the number of processes / N")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile each block")
    parser.add_argument("--activation-checkpointing", choices=["none", "selective", "selective-policy", "full"],
                        help="recompute activations in backward (selective: Llama 1's hand-written backward)")
    parser.add_argument("--seed", type=int, help="seed of the initialisation and the data order")
    parser.add_argument("--force-resume", action="store_true", default=None,
                        help="resume even though the model, tokenizer, data, block size or batch differ from the "
                             "checkpoint's (they are refused otherwise; lr, steps, logging, evaluation may change)")
    parser.add_argument("--collective-timeout", type=float, metavar="SECONDS",
                        help="how long a process waits for the others in a collective before failing (default 600)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (JSON) and exit")


FLAG_KEYS = {"output_dir": "output_dir", "preset": "model.preset", "steps": "trainer.steps", "lr": "trainer.lr",
             "batch_size": "trainer.micro_batch_size", "grad_accum": "trainer.grad_accum_steps",
             "block_size": "data.block_size", "device": "trainer.device", "parallelism": "trainer.parallelism",
             "tensor_parallel": "trainer.tensor_parallel", "compile": "trainer.compile", "seed": "trainer.seed",
             "force_resume": "trainer.force_resume", "collective_timeout": "trainer.collective_timeout",
             "activation_checkpointing": "trainer.activation_checkpointing"}


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The `PretrainConfig` of parsed flags: the config file, then the flags, then --set (the last one wins)."""
    return load_config(PretrainConfig, args.config, flag_settings(args, FLAG_KEYS), args.overrides)


def run(args: argparse.Namespace) -> None:
    """Run `llama-course pretrain`: config file, then flags, then --set overrides (the last one wins)."""
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return
    result = run_pretraining(config, pretraining_data(config.data))
    if not result.losses:
        print(f"the run in {config.output_dir} is already at step {result.step} = trainer.steps: nothing to train")
    elif result.val_loss is not None:
        print(f"finished step {result.step}: validation loss {result.val_loss:.4f} ({result.checkpoint})")
