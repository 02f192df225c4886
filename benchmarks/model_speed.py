"""Training and decoding speed of llama_course against transformers' LlamaForCausalLM, printed as JSON.

Both models run in one process, on the same machine, with the same threads and the SAME weights (ours are
converted with `llama_course.interop`), both with SDPA attention:
- training: forward + backward tokens/s on a (batch, seq_len) batch; model FLOPs utilisation (MFU) against
  this machine's measured float32 matmul FLOP/s, with `6N + 12 * layers * heads * head_dim * seq_len` FLOPs
  per token (N excludes the token embedding; PAPER_FACTS.md);
- decoding: greedy tokens/s for `new_tokens` tokens after a short prompt, with our KV cache, without it
  (the whole prefix recomputed each step), and with transformers' `generate`.
Every comparison runs its alternatives in interleaved rounds (ours, theirs, ours, theirs, ...), so a
disturbance of the machine hits all of them; each reports the median of its rounds and their spread
((max - min) / median), and every speedup is the ratio of two medians of this one run.

Where the difference comes from: in training, the output projection fused with the loss
(`layers/cross_entropy.py`) never allocates the full logits and reuses one buffer, which on a CPU saves the page
faults of fresh 100+ MB tensors; in decoding, our output head multiplies by a (dim, vocab) copy of its weight
(`generation.cpu_decoding_layout`), which MKL streams about 2.5x faster than the (vocab, dim) weight used transposed.
The matmuls themselves are the same in both models, so training can gain only on what surrounds them.

Run: python benchmarks/model_speed.py            (about 2 minutes on 2 CPU cores)
"""

import argparse
import dataclasses
import json
import platform

import torch
import transformers

from llama_course.config import PRESETS, count_parameters
from llama_course.generation import generate
from llama_course.interop import hf_config_from_model_config, to_hf_state_dict
from llama_course.measurements.profiling import interleaved_seconds, timing_summary
from llama_course.model import IGNORE_INDEX, Llama
from llama_course.training.mfu import measure_matmul_flops, model_flops_utilization, training_flops_per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench-24m", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both models")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=5, help="timed rounds, one step per model each")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--decode-rounds", type=int, default=3, help="timed rounds of each way of decoding")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    # RoPE has no learned positions, so a longer context only lets decoding run past seq_len with the same weights.
    config = dataclasses.replace(PRESETS[args.preset], attention_backend="sdpa",
                                 max_seq_len=max(args.seq_len, args.prompt_len + args.new_tokens))
    ours = Llama(config).to(device)
    hf_config = transformers.LlamaConfig(**hf_config_from_model_config(config))
    hf = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa").to(device)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config), strict=True)
    hf.generation_config.pad_token_id = 0

    # --- training: forward + backward --------------------------------------------------------------------
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), device=device)
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], IGNORE_INDEX)], dim=1)
    losses = {}

    def step_ours() -> None:
        ours.zero_grad(set_to_none=True)
        loss = ours(tokens, targets=targets).loss
        loss.backward()
        losses["ours"] = loss.item()

    def step_hf() -> None:
        hf.zero_grad(set_to_none=True)
        loss = hf(input_ids=tokens, labels=tokens).loss  # transformers shifts the labels itself
        loss.backward()
        losses["transformers"] = loss.item()

    times = interleaved_seconds({"ours": step_ours, "transformers": step_hf}, rounds=args.train_steps)
    peak = measure_matmul_flops(device=device)
    per_token = training_flops_per_token(config, args.seq_len)
    train = {}
    for name, seconds in times.items():
        timing = timing_summary(seconds)
        tokens_per_s = args.batch * args.seq_len / timing["median_s"]
        mfu = model_flops_utilization(tokens_per_s, per_token, peak)
        train[name] = {"tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 3),
                       "step_median_s": round(timing["median_s"], 4), "step_spread": round(timing["spread"], 3),
                       "loss": round(losses[name], 5)}
    train["speedup_ours_over_transformers"] = round(
        timing_summary(times["transformers"])["median_s"] / timing_summary(times["ours"])["median_s"], 3)

    # --- decoding: greedy, batch of one prompt ----------------------------------------------------------
    prompt = torch.randint(1, config.vocab_size, (1, args.prompt_len), device=device)
    outputs, decode = {}, {}
    runs = {
        "ours_kv_cache": lambda: generate(ours, prompt.tolist(), args.new_tokens),
        "ours_no_cache": lambda: generate(ours, prompt.tolist(), args.new_tokens, use_cache=False),
        "transformers_generate": lambda: hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None)[0, args.prompt_len:].tolist(),
    }
    with torch.no_grad():
        generate(ours, prompt.tolist(), 4), hf.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
        times = interleaved_seconds(
            {name: lambda name=name, run=run: outputs.__setitem__(name, run()) for name, run in runs.items()},
            rounds=args.decode_rounds, warmup=0)
    for name, seconds in times.items():
        timing = timing_summary(seconds)
        decode[name] = {"tokens_per_s": round(args.new_tokens / timing["median_s"], 1),
                        "median_s": round(timing["median_s"], 3), "spread": round(timing["spread"], 3)}
    reference = outputs["transformers_generate"]
    decode["greedy_tokens_equal"] = all(
        (output[0] if name.startswith("ours") else output) == reference for name, output in outputs.items())
    decode["speedup_ours_kv_cache_over_transformers"] = round(
        timing_summary(times["transformers_generate"])["median_s"] / timing_summary(times["ours_kv_cache"])["median_s"],
        3)

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": str(device),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "config": {"preset": args.preset, **dataclasses.asdict(config),
                   "parameters": count_parameters(config),
                   "parameters_without_embedding": count_parameters(config, include_embedding=False)},
        "batch": [args.batch, args.seq_len],
        "flops_per_token": per_token,
        "matmul_flops_per_s": round(peak),
        "train": train,
        "decode": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, **decode},
        "targets": {"train_speedup": 1.25, "decode_speedup": 1.25},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
