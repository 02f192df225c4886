"""Training tokens/s and model FLOPs utilisation (MFU) on one GPU: our trainer's options, and transformers'.

Every variant is the same `Trainer.train_step` (forward, summed cross-entropy, backward, clipping, AdamW,
schedule) on the same random batch of `--batch` sequences of `--seq` tokens; a variant names the model and
the options it is trained with, joined by "+":

    ours | transformers     our `Llama`, or `transformers.LlamaForCausalLM` at the same config
    compile                 `torch.compile` of every transformer block
    fsdp                    FSDP2 (`fully_shard`, bf16 mixed-precision policy) in a process group of one
    selective | selective-policy | full
                            activation checkpointing (`training/activation_checkpointing.py`; transformers
                            has only "full", its `gradient_checkpointing_enable`)

e.g. `ours+compile+full`. On CUDA the parameters are float32 and the step computes in bf16 (autocast, or
FSDP2's policy); on the CPU everything is float32. All variants are built first, then step in interleaved
rounds (`interleaved_seconds`): each reports the median step and the spread of its rounds, and the JSON
gives the ratio of medians of each `ours...` variant to `transformers...` with the same options.

MFU = tokens/s * (6N + 12 L H hd T) / peak. The peak is the bf16 dense Tensor Core peak of a known card's
datasheet, else (other cards, and the CPU's float32) the best throughput of a large square matmul measured
here; `peak_source` says which. Recomputation is not model FLOPs: full checkpointing does about a third
more arithmetic per token than it is credited with.

    python benchmarks/gpu_throughput.py --preset bench-374m
    python benchmarks/gpu_throughput.py --preset bench-1.1b \\
        --variants ours,ours+compile,transformers,transformers+compile
    python benchmarks/gpu_throughput.py --device cpu --preset tiny --seq 128 --batch 2 --rounds 2 \\
        --variants ours,ours+fsdp,ours+full,transformers     # the smoke run of the tests

Each variant keeps its own float32 weights and AdamW moments resident (16 bytes per parameter with the
gradients): choose `--variants` to fit the GPU's memory (the run refuses up front when they cannot fit).
Prints one JSON object. Target (issue 25): MFU >= 45% for bench-1.1b with the best settings, and >= 1.1x
transformers' tokens/s with the same settings.
"""

import argparse
import contextlib
import json
import re
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
from training import hf_causal_lm_loss, hf_llama

from llama_course.config import PRESETS, count_parameters
from llama_course.measurements.profiling import interleaved_seconds, timing_summary
from llama_course.model import Llama
from llama_course.training import TensorBlocks, Trainer, TrainerConfig, causal_lm_loss
from llama_course.training.activation_checkpointing import CHECKPOINT_MODES
from llama_course.training.mfu import measure_matmul_flops, model_flops_utilization, training_flops_per_token

MODELS = ("ours", "transformers")
OPTIONS = ("compile", "fsdp", *CHECKPOINT_MODES[1:])
DEFAULT_VARIANTS = ("ours", "ours+compile", "ours+fsdp", "ours+selective", "ours+selective-policy", "ours+full",
                    "transformers", "transformers+compile", "transformers+full")
# bf16 dense Tensor Core peaks (FLOP/s, without sparsity) from NVIDIA's datasheets: "NVIDIA H100 Tensor Core GPU"
# (SXM 989 TFLOPS, PCIe 756), "NVIDIA H200 Tensor Core GPU" (SXM 989), "NVIDIA A100 Tensor Core GPU" (312).
# Searched for in torch.cuda.get_device_name(); other cards (H100 NVL, H200 NVL, GH200, ...) are measured.
DATASHEET_BF16_PEAKS = (
    (r"\bH100 PCIe\b", "NVIDIA H100 PCIe", 756e12),
    (r"\bH100 80GB HBM3\b", "NVIDIA H100 SXM", 989e12),
    (r"\bH200$", "NVIDIA H200 SXM", 989e12),
    (r"\bA100\b", "NVIDIA A100", 312e12),
)
BYTES_PER_PARAMETER = 16  # float32 weight, gradient and AdamW's two moments


@dataclass(frozen=True)
class Variant:
    model: str
    compile: bool
    fsdp: bool
    checkpointing: str


def parse_variant(name: str) -> Variant:
    """`ours+compile+full` -> Variant("ours", compile=True, fsdp=False, checkpointing="full")."""
    model, *options = name.split("+")
    if model not in MODELS:
        raise ValueError(f"variant {name!r} starts with {model!r}; start it with one of {MODELS}")
    unknown = [option for option in options if option not in OPTIONS]
    if unknown:
        raise ValueError(f"variant {name!r} has unknown options {unknown}; choose from {OPTIONS}")
    checkpointing = [option for option in options if option in CHECKPOINT_MODES]
    if len(checkpointing) > 1 or len(set(options)) < len(options):
        raise ValueError(f"variant {name!r} repeats an option or names two checkpointing modes; keep one of each")
    mode = checkpointing[0] if checkpointing else "none"
    if model == "transformers" and mode not in ("none", "full"):
        raise ValueError(f"variant {name!r}: transformers has no {mode!r} checkpointing; use transformers+full")
    return Variant(model, "compile" in options, "fsdp" in options, mode)


def datasheet_peak(device_name: str) -> tuple[float, str] | None:
    """(bf16 dense FLOP/s, card) of the first table entry whose pattern `device_name` contains; None if none."""
    for pattern, card, peak in DATASHEET_BF16_PEAKS:
        if re.search(pattern, device_name):
            return peak, card
    return None


def build_trainer(variant: Variant, config, data: TensorBlocks, args, device: torch.device, output_dir: str
                  ) -> Trainer:
    torch.manual_seed(0)
    if variant.model == "ours":
        model, loss_fn = Llama(config), causal_lm_loss
    else:
        model, loss_fn = hf_llama(config), hf_causal_lm_loss
        if variant.checkpointing == "full":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainer_config = TrainerConfig(
        steps=args.warmup + args.rounds, micro_batch_size=args.batch, warmup_steps=1, device=str(device),
        progress=False, eval_every=0, checkpoint_every=0, compile=variant.compile,
        parallelism="fsdp" if variant.fsdp else "none",
        activation_checkpointing=variant.checkpointing if variant.model == "ours" else "none")
    return Trainer(model, data, trainer_config, output_dir, loss_fn=loss_fn, columns=["input_ids", "labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench-374m", choices=sorted(PRESETS))
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated variants, e.g. ours,ours+compile,transformers (see the docstring)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds, one optimizer step per variant each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation happens here)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a float32 smoke run")
    args = parser.parse_args()
    names = list(dict.fromkeys(name.strip() for name in args.variants.split(",") if name.strip()))
    if not names:
        parser.error(f"--variants {args.variants!r} names no variant; e.g. --variants ours,transformers")
    try:
        variants = {name: parse_variant(name) for name in names}
    except ValueError as error:
        parser.error(str(error))
    config = PRESETS[args.preset]
    if args.seq > config.max_seq_len:
        parser.error(f"--seq {args.seq} exceeds {args.preset}'s context of {config.max_seq_len}; use a shorter --seq")
    for name, least in (("batch", 1), ("rounds", 1), ("warmup", 0)):
        if getattr(args, name) < least:
            parser.error(f"--{name} {getattr(args, name)} must be at least {least}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device!r} is not cuda, cuda:N or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu for the smoke run")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    n_parameters = count_parameters(config)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        resident = len(variants) * BYTES_PER_PARAMETER * n_parameters
        if resident > 0.9 * total:
            parser.error(f"{len(variants)} variants of {args.preset} keep {resident / 2**30:.0f} GiB of weights and "
                         f"AdamW state resident, more than this GPU's {total / 2**30:.0f} GiB; pass fewer --variants")

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch * (args.warmup + args.rounds), args.seq + 1),
                           generator=generator)
    data = TensorBlocks(input_ids=tokens[:, :-1], labels=tokens[:, 1:])
    flops_per_token = training_flops_per_token(config, args.seq)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
        measured = measure_matmul_flops(8192, dtype=torch.bfloat16, device=device, min_seconds=2.0)
        known = datasheet_peak(device_name)
        peak, peak_source = ((known[0], f"datasheet: {known[1]}, bf16 dense") if known
                             else (measured, "measured: 8192^3 bf16 matmul"))
    else:
        device_name = "cpu"
        measured = measure_matmul_flops(1024, min_seconds=0.5)
        peak, peak_source = measured, "measured: 1024^3 float32 matmul"

    fsdp = any(variant.fsdp for variant in variants.values())
    if fsdp:  # FSDP2 needs a process group: one process, this one
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1, device_id=device if device.type == "cuda" else None)
    try:
        with contextlib.ExitStack() as stack:
            trainers = {name: build_trainer(variant, config, data, args, device,
                                            stack.enter_context(tempfile.TemporaryDirectory()))
                        for name, variant in variants.items()}
            step_peaks = dict.fromkeys(trainers, 0)

            def timed_step(name: str, trainer: Trainer):
                def step() -> None:
                    if device.type == "cuda":  # memory the step adds on top of every variant's resident state
                        before = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    trainer.train_step()
                    if device.type == "cuda":
                        step_peaks[name] = max(step_peaks[name], torch.cuda.max_memory_allocated(device) - before)
                return step

            seconds = interleaved_seconds({name: timed_step(name, trainer) for name, trainer in trainers.items()},
                                          rounds=args.rounds, warmup=args.warmup)
            for trainer in trainers.values():
                trainer.read_steps()  # raises if a variant's loss was not finite
    finally:
        if fsdp:
            dist.destroy_process_group()

    tokens_per_step = args.batch * args.seq
    timings = {name: timing_summary(times) for name, times in seconds.items()}
    results = {}
    for name, timing in timings.items():
        tokens_per_s = tokens_per_step / timing["median_s"]
        results[name] = {
            "tokens_per_s": round(tokens_per_s, 2), "step_median_s": timing["median_s"],
            "step_min_s": timing["min_s"], "step_max_s": timing["max_s"], "step_spread": round(timing["spread"], 4),
            "mfu": round(model_flops_utilization(tokens_per_s, flops_per_token, peak), 6),
            "step_memory_gib": round(step_peaks[name] / 2**30, 3) if device.type == "cuda" else None,
        }
    speedups = {name: round(timings["transformers" + name[4:]]["median_s"] / timing["median_s"], 4)
                for name, timing in timings.items()
                if name.startswith("ours") and "transformers" + name[4:] in timings}
    best = max((name for name in results if name.startswith("ours")), key=lambda n: results[n]["tokens_per_s"],
               default=None)
    print(json.dumps({
        "device": device_name, "torch": torch.__version__, "preset": args.preset, "parameters": n_parameters,
        "batch": args.batch, "seq_len": args.seq, "tokens_per_step": tokens_per_step,
        "compute": "bf16 (float32 weights)" if device.type == "cuda" else "float32",
        "rounds": args.rounds, "warmup": args.warmup, "flops_per_token": flops_per_token,
        "peak_flops": peak, "peak_source": peak_source, "measured_matmul_flops": measured,
        "variants": results, "speedup_vs_transformers": speedups, "best_ours": best,
        "targets": {"best_ours_mfu": 0.45, "speedup_vs_transformers": 1.1},
    }, indent=1))


if __name__ == "__main__":
    main()
