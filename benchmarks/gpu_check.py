"""GPU check of the trainer's CUDA-only paths; prints one JSON object. Run on a machine with a CUDA GPU:

    python benchmarks/gpu_check.py

1. bf16 autocast (one process): the loss falls, logits come back in float32, and a short run continued from
   its checkpoint matches the uninterrupted one to bf16 precision.
2. FSDP2 with the bf16 mixed-precision policy on 1 GPU (a process group of one): same data, losses close to
   the autocast run; a Distributed Checkpoint save at step 3 resumed to step 6.
3. torch.compile of every block: losses close to the eager run, and its speed.
4. Throughput of the bench-24m preset (batch 8 x 256) eager and compiled, as tokens/s: the two trainers step
   in interleaved rounds; each reports the median and spread of its rounds, and the speedup is the ratio of
   the two medians.
"""

import json
import os
import tempfile

import torch
import torch.distributed as dist

from llama_course.config import PRESETS
from llama_course.measurements.profiling import interleaved_seconds, timing_summary
from llama_course.model import Llama
from llama_course.training import TensorBlocks, Trainer, TrainerConfig, causal_lm_loss


def learnable_blocks(vocab_size: int, n: int, seq: int) -> TensorBlocks:
    """Streams where token t+1 = (7 * token t + 3) mod V from random starts: the loss must fall quickly."""
    generator = torch.Generator().manual_seed(0)
    columns = [torch.randint(0, vocab_size, (n, 1), generator=generator)]
    for _ in range(seq):
        columns.append((columns[-1] * 7 + 3) % vocab_size)
    tokens = torch.cat(columns, dim=1)
    return TensorBlocks(input_ids=tokens[:, :-1], labels=tokens[:, 1:])


def train(preset: str, data, output_dir: str, until=None, steps=6, **overrides):
    torch.manual_seed(0)
    values = dict(steps=steps, micro_batch_size=8, lr=1e-3, warmup_steps=2, progress=False, eval_every=0,
                  checkpoint_every=0, log_every=1, device="cuda") | overrides
    trainer = Trainer(Llama(PRESETS[preset]), data, TrainerConfig(**values), output_dir,
                      loss_fn=causal_lm_loss, columns=["input_ids", "labels"])
    return trainer, trainer.fit(until_step=until)


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    data = learnable_blocks(PRESETS["small"].vocab_size, 256, 128)
    with tempfile.TemporaryDirectory() as root:
        autocast_trainer, autocast = train("small", data, f"{root}/autocast", steps=30)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = autocast_trainer.model(data[[0]]["input_ids"].cuda()).logits
        report["bf16_autocast"] = {"first_loss": autocast.losses[0], "last_loss": autocast.losses[-1],
                                   "loss_fell": autocast.losses[-1] < autocast.losses[0] - 1.0,
                                   "logits_dtype": str(out.dtype)}
        _, first = train("small", data, f"{root}/autocast_split", until=15, steps=30)
        _, rest = train("small", data, f"{root}/autocast_split", steps=30)
        report["bf16_resume_max_loss_gap"] = max_gap(first.losses + rest.losses, autocast.losses)

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
        fsdp_trainer, fsdp = train("small", data, f"{root}/fsdp", steps=30, parallelism="fsdp")
        weight = fsdp_trainer.raw_model.layers[0].attention.wq.weight
        _, fsdp_first = train("small", data, f"{root}/fsdp_split", until=15, steps=30, parallelism="fsdp")
        _, fsdp_rest = train("small", data, f"{root}/fsdp_split", steps=30, parallelism="fsdp")
        report["fsdp2_bf16_policy"] = {
            "parameter_type": type(weight).__name__, "parameter_dtype": str(weight.dtype),
            "last_loss": fsdp.losses[-1], "max_loss_gap_vs_autocast": max_gap(fsdp.losses, autocast.losses),
            "dcp_resume_max_loss_gap": max_gap(fsdp_first.losses + fsdp_rest.losses, fsdp.losses),
            "sharded_checkpoint": os.path.exists(f"{root}/fsdp_split/checkpoints/step_00000015/sharded/.metadata"),
        }
        dist.destroy_process_group()
        for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(key)

        _, compiled = train("small", data, f"{root}/compiled", steps=30, compile=True)
        report["compile_max_loss_gap_vs_eager"] = max_gap(compiled.losses, autocast.losses)

        bench = PRESETS["bench-24m"]
        bench_data = learnable_blocks(bench.vocab_size, 8 * 40, 256)
        trainers = {}
        for name, compile_blocks in (("eager", False), ("compiled", True)):
            torch.manual_seed(0)
            trainers[name] = Trainer(Llama(bench), bench_data, TrainerConfig(
                steps=40, micro_batch_size=8, warmup_steps=1, progress=False, eval_every=0, checkpoint_every=0,
                device="cuda", compile=compile_blocks), f"{root}/bench_{name}", columns=["input_ids", "labels"])
        seconds = interleaved_seconds({name: trainer.train_step for name, trainer in trainers.items()},
                                      rounds=20, warmup=2)
        timings = {name: timing_summary(times) for name, times in seconds.items()}
        report["bench24m_bf16"] = {
            name: {"tokens_per_s": round(8 * 256 / timing["median_s"], 1), "spread": round(timing["spread"], 3)}
            for name, timing in timings.items()}
        report["bench24m_bf16"]["speedup_compiled"] = round(
            timings["eager"]["median_s"] / timings["compiled"]["median_s"], 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
