"""A policy against its starting point on the RLHF rounds' held-out prompts, judged by the toy world's truth:
task helpfulness of greedy and of sampled answers (T = 0.8, 4 per prompt), refusals on unsafe prompts and false
refusals on borderline ones, each as a paired difference with a 95% bootstrap interval over prompts.

    python scripts/held_out_gain.py --base sft --policy runs/ppo-ceiling/policy [--out FILE]

Measured (2026-12-05, one seed; 300 held-out tasks, 100 safety prompts): PPO with the TRUE reward as its judge
(`llama-course ppo --reward true --iterations 250 --lr 1e-4 --beta 0.05 --prompts 16000 --output-dir
runs/ppo-ceiling/run --save runs/ppo-ceiling/policy`, about 12 minutes on a free 2-core CPU) against the shipped
SFT model: greedy task helpfulness -0.011 [-0.042, +0.023] (0.463 -> 0.453), sampled +0.024 [-0.001, +0.050]
(0.411 -> 0.435); unsafe refusals and borderline false refusals unchanged. With a perfect reward, 250 iterations of
PPO at a KL of about 1 to 2 nats per answer do not lift this policy measurably.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from llama_course.alignment.sft import load_base_model
from llama_course.evaluation import bootstrap_mean
from llama_course.experiments.rlhf import RLHFConfig, eval_prompts, measure_policy, prompt_kind

MEASURES = {"helpfulness_tasks": ("helpfulness", "tasks"), "refusal_unsafe": ("refuses", "unsafe"),
            "false_refusal_borderline": ("refuses", "borderline")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="sft", help="the starting policy: a shipped model name or a folder")
    parser.add_argument("--policy", required=True, help="the tuned policy: a shipped model name or a folder")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args()
    config = RLHFConfig()
    prompts = eval_prompts(config)
    values = {}
    for name in ("base", "policy"):
        model, tokenizer = load_base_model(getattr(args, name))
        values[name] = measure_policy(model.eval(), tokenizer, prompts, config, seed=7)
    result = {"base": args.base, "policy": args.policy}
    for label, (name, kind) in MEASURES.items():
        for prefix in ("", "sampled_"):
            mask = prompt_kind(values["base"], kind)
            base, tuned = (np.asarray(values[v][prefix + name])[mask] for v in ("base", "policy"))
            result[prefix + label] = {"base": float(base.mean()), "policy": float(tuned.mean()),
                                      "difference": bootstrap_mean(tuned - base).as_dict(), "prompts": len(base)}
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
