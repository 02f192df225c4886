"""The ceiling of rejection sampling at our scale: fine-tune the SFT policy on its best-of-K answers picked by the
TRUTH (a perfect reward model) and measure held-out greedy helpfulness. If even this does not move the policy, no
reward model can make rejection sampling work with these settings; the measurement behind issue 21's next lever.

    python scripts/rs_ceiling_probe.py --out runs/rs_ceiling.json [--prompts 6000] [--samples 4] \
        [--setting 6000:1e-4:2 --setting 6000:5e-4:2 ...]

Each `--setting PROMPTS:LR:EPOCHS` (PROMPTS may be 0 with `--replay`) fine-tunes a fresh copy of the shipped SFT
model (`finetune_on_answers`, answer-only loss) on the oracle's pick for the first PROMPTS prompts (and, with
`--replay N`, on N tasks of the SFT model's own training data) and reports the paired difference on 300 held-out
tasks (mean and standard error). The samples are drawn once and cached (`--cache`).

Measured (2026-12-05, 2 CPU cores, about 40 minutes with the sampling): the oracle's picks average 0.609 true
helpfulness against the SFT model's greedy 0.463 on the held-out tasks, yet fine-tuning on them moves held-out
greedy helpfulness by +0.005 (standard error 0.010; 6,000 prompts, lr 1e-4), +0.005 (0.011; 6,000, 5e-4),
+0.003 (0.012; 1,500, 5e-4) and -0.003 (0.013; 6,000, 1e-3): with a perfect reward model, rejection sampling at
this scale does not improve the greedy policy. Nor with better picks (best of 16, picks 0.760, 2,000 prompts, 5e-4:
-0.015, s.e. 0.014) or with 3,000 of the SFT model's own training tasks replayed (`--replay 3000`, 6,000 prompts,
5e-4: +0.002, s.e. 0.014; the replay alone: -0.013, s.e. 0.016).

Sampled answers (T = 0.8, 4 per held-out task) are where it acts, and only there (one seed each, s.e. in brackets):
- a 5x larger policy, the 4.95M model of configs/sft-small-more-data.toml (`--policy runs/sft-small-more-model
  --prompts 3000 --setting 3000:1e-4:2`): greedy +0.013 (0.011) from 0.698, sampled +0.017 (0.007);
- the policy of configs/sft-careless.toml, fine-tuned on careless demonstrations (`--policy
  runs/careless/sft-0.5-model --prompts 3000`): greedy +0.013 (0.012), sampled +0.072 (0.008) from 0.355 at lr
  1e-4; +0.013 (0.014) and +0.078 (0.009) at 5e-4. Picked by the shipped helpfulness RM (`--rm helpfulness`):
  sampled -0.006 (0.006) and -0.010 (0.008), its picks no better than a random sample (0.346 against 0.355).
  Picked by the log-likelihood of the 4.95M model, untrained (`--loglik runs/sft-small-more-model`, 5e-4): picks
  0.462 (the truth's: 0.584), sampled +0.066 (0.009), greedy -0.002 (0.016).

The same careless policy picking among its answers to 3,000 OTHER tasks (`--prompt-seed 31339 --cache
runs/careless/rs-samples-fresh.json --setting 3000:5e-4:2`), so that a reward model trained on the first 3,000
tasks' answers judges answers it has not seen: picked by the truth (picks 0.581), sampled +0.068 (0.009), greedy
+0.007 (0.013); by the likelihood RM of scripts/likelihood_rm_probe.py from configs/sft-careless-small.toml's model
(`--rm runs/careless/likelihood-rm-sft-small-more-0.5-model-0.0001`, picks 0.450), sampled +0.080 (0.010), greedy
+0.003 (0.016); by that backbone's log-likelihood, untrained (`--loglik runs/careless/sft-small-more-0.5-model`,
picks 0.448), sampled +0.063 (0.009), greedy -0.016 (0.015). A judge that captures well under half of the truth's
pick quality gets as much of the sampled gain as the truth: one round removes the slips' tail, which a modest
judge already sees.
"""

import argparse
import json
from pathlib import Path

import torch

from llama_course.alignment.rejection import (
    RejectionConfig,
    finetune_on_answers,
    log_likelihood_scorer,
    reward_model_scorer,
    sample_responses,
)
from llama_course.alignment.reward_train import load_reward_model
from llama_course.alignment.sft import load_base_model, load_sft_config
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.experiments.toyworld_data import training_conversations
from llama_course.pretrained import ASSETS_DIR
from llama_course.toyworld import generate_tasks, helpfulness


def sft_replay(n: int) -> tuple[list[str], list[str]]:
    """The first `n` single-turn tasks of the shipped SFT model's own training mix, with their reference answers."""
    mix = training_conversations(load_sft_config(ASSETS_DIR / "sft" / "sft.toml").data)
    pairs = [(m[0]["content"], m[1]["content"]) for m, source in zip(mix["messages"], mix["source"], strict=True)
             if source.startswith("task:")][:n]
    return [p for p, _ in pairs], [a for _, a in pairs]


def run_name(args: argparse.Namespace, prompts: int, lr: float, epochs: float) -> str:
    picker = Path(args.rm or args.loglik or "truth").name + ("-loglik" if args.loglik else "")
    fresh = "" if args.prompt_seed == 31338 else f"-prompts-{args.prompt_seed}"
    return f"runs/rs-ceiling-{Path(args.policy).name}-{picker}-{prompts}-{lr}-{epochs}-replay-{args.replay}{fresh}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=6000)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--setting", action="append", default=None, metavar="PROMPTS:LR:EPOCHS")
    parser.add_argument("--cache", type=Path, default=Path("runs/rs-ceiling-samples.json"))
    parser.add_argument("--prompt-seed", type=int, default=31338, help="seed of the tasks sampled for the picks")
    judge = parser.add_mutually_exclusive_group()
    judge.add_argument("--rm", default=None, help="pick by this reward model (shipped name or folder), not the truth")
    judge.add_argument("--loglik", default=None, metavar="MODEL",
                       help="pick by the answer's log-likelihood under this model (shipped name or folder)")
    parser.add_argument("--policy", default="sft", help="the policy: a shipped model name or an exported folder")
    parser.add_argument("--replay", type=int, default=0,
                        help="also fine-tune on this many tasks of the SFT model's own training data (seen before)")
    args = parser.parse_args()
    settings = [tuple(float(x) for x in s.split(":")) for s in (args.setting or ["6000:1e-4:2", "6000:5e-4:2",
                                                                               "1500:5e-4:2", "6000:1e-3:2"])]
    policy, tokenizer = load_base_model(args.policy)
    held_out = list(generate_tasks(300, seed=424_242)["prompt"])

    def truth(model) -> torch.Tensor:
        """Per held-out task: greedy helpfulness, and the mean over 4 samples at the sampling temperature."""
        answers = answer_prompts(model, tokenizer, held_out, max_new_tokens=48)
        greedy = [helpfulness(p, a) for p, a in zip(held_out, answers, strict=True)]
        drawn = sample_responses(model, tokenizer, held_out, 4, args.temperature, max_new_tokens=48, seed=7)
        sampled = [sum(helpfulness(p, a) for a in row) / len(row) for p, row in zip(held_out, drawn, strict=True)]
        return torch.tensor([greedy, sampled])

    if args.cache.is_file():
        prompts, samples = json.loads(args.cache.read_text())
    else:
        prompts = list(generate_tasks(args.prompts, seed=args.prompt_seed)["prompt"])
        samples = sample_responses(policy, tokenizer, prompts, args.samples, args.temperature, max_new_tokens=48,
                                   seed=6)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        args.cache.write_text(json.dumps([prompts, samples]))
    picker_name = args.rm or (args.loglik and f"log-likelihood under {args.loglik}") or "truth"
    if args.rm is None and args.loglik is None:
        best = [max(row, key=lambda answer, p=p: helpfulness(p, answer))
                for p, row in zip(prompts, samples, strict=True)]
    else:
        judge = (reward_model_scorer(load_reward_model(args.rm)[0], tokenizer) if args.rm is not None
                 else log_likelihood_scorer(load_base_model(args.loglik)[0].eval(), tokenizer))
        scores = judge([p for p in prompts for _ in range(args.samples)], [a for row in samples for a in row])
        picks = scores.view(len(prompts), args.samples).argmax(dim=1).tolist()
        best = [row[i] for row, i in zip(samples, picks, strict=True)]
    base = truth(policy)
    result = {"policy": args.policy, "picker": picker_name, "sft": float(base[0].mean()),
              "sft_sampled": float(base[1].mean()), "held_out": len(held_out), "samples": args.samples,
              "kept_truth": sum(helpfulness(p, a) for p, a in zip(prompts, best, strict=True)) / len(prompts),
              "replay": args.replay, "settings": []}
    replay_prompts, replay_answers = sft_replay(args.replay) if args.replay else ([], [])
    for n, lr, epochs in settings:
        model, _ = load_base_model(args.policy)
        config = RejectionConfig(samples=args.samples, temperature=args.temperature, epochs=epochs, lr=lr)
        tuned = finetune_on_answers(model, tokenizer, prompts[: int(n)] + replay_prompts,
                                    best[: int(n)] + replay_answers, config,
                                    run_name(args, int(n), lr, epochs), 0)
        difference = truth(tuned) - base
        result["settings"].append({"prompts": int(n), "lr": lr, "epochs": epochs,
                                   "after": float((base + difference)[0].mean()),
                                   "difference": float(difference[0].mean()),
                                   "standard_error": float(difference[0].std() / len(held_out) ** 0.5),
                                   "sampled_after": float((base + difference)[1].mean()),
                                   "sampled_difference": float(difference[1].mean()),
                                   "sampled_standard_error": float(difference[1].std() / len(held_out) ** 0.5)})
        print(json.dumps(result["settings"][-1]), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
