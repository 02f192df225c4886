"""Training throughput of our trainer on our `Llama` vs on `transformers.LlamaForCausalLM`, and CPU MFU.

Both models have the same architecture and size (the `bench-24m` preset: dim 288, 6 layers, 6 heads, vocab
32000) and are driven by the SAME loop (`Trainer.train_step`: forward, summed cross-entropy, backward,
clipping, AdamW, schedule), with the same batch (8 x 256 tokens), dtype (float32) and threads. Only the
model differs. MFU = tokens/s * (6N + 12 L H hd T) / the machine's measured float32 matmul FLOP/s.

    python benchmarks/training.py [--steps 4] [--warmup 1] [--batch 8] [--seq 256] [--threads N]

Prints one JSON object. Targets: ours >= 1.25x transformers' tokens/s and >= 60% CPU MFU.
"""

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F

from llama_course.config import PRESETS
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


def tokens_per_second(model, loss_fn, data, args) -> float:
    config = TrainerConfig(steps=args.warmup + args.steps, micro_batch_size=args.batch, warmup_steps=1,
                           device="cpu", progress=False, eval_every=0, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(model, data, config, output_dir, loss_fn=loss_fn, columns=["input_ids", "labels"])
        for _ in range(args.warmup):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        elapsed = time.perf_counter() - start
    return args.steps * args.batch * args.seq / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PRESETS["bench-24m"]
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch * (args.warmup + args.steps), args.seq + 1),
                           generator=generator)
    data = TensorBlocks(input_ids=tokens[:, :-1], labels=tokens[:, 1:])
    peak = measure_matmul_flops(2048, min_seconds=2.0)
    flops_per_token = training_flops_per_token(config, args.seq)

    torch.manual_seed(0)
    ours = tokens_per_second(Llama(config), causal_lm_loss, data, args)
    torch.manual_seed(0)
    theirs = tokens_per_second(hf_llama(config), hf_causal_lm_loss, data, args)
    print(json.dumps({
        "config": "bench-24m", "batch": args.batch, "seq_len": args.seq, "threads": args.threads,
        "flops_per_token": flops_per_token, "matmul_peak_gflops": round(peak / 1e9, 2),
        "ours_tokens_per_s": round(ours, 1), "transformers_tokens_per_s": round(theirs, 1),
        "speedup": round(ours / theirs, 3),
        "ours_mfu": round(model_flops_utilization(ours, flops_per_token, peak), 4),
        "transformers_mfu": round(model_flops_utilization(theirs, flops_per_token, peak), 4),
        "targets": {"speedup": 1.25, "ours_mfu": 0.60},
    }, indent=1))


if __name__ == "__main__":
    main()
