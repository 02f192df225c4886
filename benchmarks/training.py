"""Training throughput of our trainer on our `Llama` vs on `transformers.LlamaForCausalLM`, and CPU MFU.

Both models have the same architecture and size (the `bench-24m` preset: dim 288, 6 layers, 6 heads, vocab
32000) and are driven by the SAME loop (`Trainer.train_step`: forward, summed cross-entropy, backward,
clipping, AdamW, schedule), with the same batch (8 x 256 tokens), dtype (float32) and threads. Only the
model differs. The two trainers step in interleaved rounds (ours, theirs, ours, theirs, ...), so a disturbance
of the machine hits both; each reports the median step and the spread of its rounds, and the speedup is the
ratio of the two medians of this one run. MFU = tokens/s * (6N + 12 L H hd T) / the machine's measured
float32 matmul FLOP/s.

    python benchmarks/training.py [--rounds 7] [--warmup 1] [--batch 8] [--seq 256] [--threads N]

Prints one JSON object. Targets: ours >= 1.25x transformers' tokens/s and >= 60% CPU MFU.
"""

import argparse
import contextlib
import json
import tempfile

import torch
import torch.nn.functional as F

from llama_course.config import PRESETS
from llama_course.measurements.profiling import interleaved_seconds, timing_summary
from llama_course.model import IGNORE_INDEX, Llama
from llama_course.training import LossSum, TensorBlocks, Trainer, TrainerConfig, causal_lm_loss
from llama_course.training.mfu import measure_matmul_flops, model_flops_utilization, training_flops_per_token


def hf_llama(config):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(hf_config)


def hf_causal_lm_loss(model, batch) -> LossSum:
    """The same summed cross-entropy as `causal_lm_loss`, for a model that returns `.logits` from input_ids."""
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    labels = batch["labels"]
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return LossSum(total, (labels != IGNORE_INDEX).sum())


def trainer(model, loss_fn, data, args, output_dir: str) -> Trainer:
    config = TrainerConfig(steps=args.warmup + args.rounds, micro_batch_size=args.batch, warmup_steps=1,
                           device="cpu", progress=False, eval_every=0, checkpoint_every=0)
    return Trainer(model, data, config, output_dir, loss_fn=loss_fn, columns=["input_ids", "labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, one optimizer step per model each")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PRESETS["bench-24m"]
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch * (args.warmup + args.rounds), args.seq + 1),
                           generator=generator)
    data = TensorBlocks(input_ids=tokens[:, :-1], labels=tokens[:, 1:])
    peak = measure_matmul_flops(2048, min_seconds=2.0)
    flops_per_token = training_flops_per_token(config, args.seq)

    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(tempfile.TemporaryDirectory()) for _ in range(2)]
        torch.manual_seed(0)
        ours = trainer(Llama(config), causal_lm_loss, data, args, folders[0])
        torch.manual_seed(0)
        theirs = trainer(hf_llama(config), hf_causal_lm_loss, data, args, folders[1])
        seconds = interleaved_seconds({"ours": ours.train_step, "transformers": theirs.train_step},
                                      rounds=args.rounds, warmup=args.warmup)
    tokens_per_step = args.batch * args.seq
    timings = {name: timing_summary(times) for name, times in seconds.items()}
    models = {}
    for name, timing in timings.items():
        tokens_per_s = tokens_per_step / timing["median_s"]
        models[name] = {"tokens_per_s": round(tokens_per_s, 1), "step_median_s": round(timing["median_s"], 4),
                        "step_spread": round(timing["spread"], 3),
                        "mfu": round(model_flops_utilization(tokens_per_s, flops_per_token, peak), 4)}
    print(json.dumps({
        "config": "bench-24m", "batch": args.batch, "seq_len": args.seq, "threads": args.threads,
        "rounds": args.rounds, "flops_per_token": flops_per_token, "matmul_peak_gflops": round(peak / 1e9, 2),
        **models,
        "speedup": round(timings["transformers"]["median_s"] / timings["ours"]["median_s"], 3),
        "targets": {"speedup": 1.25, "ours_mfu": 0.60},
    }, indent=1))


if __name__ == "__main__":
    main()
