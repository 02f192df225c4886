"""Can a reward model rank a policy's own answers well enough for rejection sampling? Issue 21's target 1 measured:
best-of-8 picked by the RM must capture at least half of the oracle's best-of-8 gain in true helpfulness.

    python scripts/likelihood_rm_probe.py --out runs/careless/likelihood_rm_probe.json \
        --backbone runs/sft-small-more-model [--lr 3e-5 --lr 1e-4] [--policy runs/careless/sft-0.5-model]

The policy (default: the careless-annotator SFT model of configs/sft-careless.toml) answered 3,000 tasks 4 times at
T = 0.8 (scripts/rs_ceiling_probe.py's cache, `--train-samples`). Its answers are paired (1st with 2nd, 3rd with
4th) and labelled by the toy world's helpfulness annotators (noise 1: choice and strength, as the RMs' other data).
Judges, each trained from `--backbone` on those pairs (one epoch, small margin):

- the backbone's log-likelihood of the answer, untrained (`rejection.log_likelihood_scorer`);
- a likelihood RM per `--lr` (`RewardModel(head="likelihood")`, saved under runs/careless/likelihood-rm-*);
- with `--scalar-lr`, the paper's scalar RM from the same backbone.

Each judge scores 8 fresh samples (T = 0.8) of each of 300 held-out tasks (seed 424242, the RLHF rounds' held-out
tasks): accuracy on the pairs of samples whose true helpfulness differs, and the share of the oracle's best-of-N gain
over one sample that its pick captures (N = 4 and 8; exact expectations over subsets, bootstrap 95% interval over
prompts). Results are kept per judge in `--out`, so a rerun only computes what is missing.

Measured (2026-12-05, one seed, 5,346 training pairs, 300 held-out tasks; about 12 minutes per trained RM on 2 CPU
cores). One sample averages 0.360 true helpfulness, the oracle's best of 8 0.663. Best-of-8 capture [95% interval]
(best-of-4 in brackets after it), pairwise accuracy where the truth differs:

- backbone runs/sft-small-more-model (4.95M, perfect demonstrations, configs/sft-small-more-data.toml):
  untrained 0.36 [0.26, 0.45] (0.41), accuracy 0.713; likelihood RM at lr 1e-4: 0.38 [0.29, 0.48] (0.45), 0.746;
- backbone runs/careless/sft-small-more-0.5-model (the same recipe on careless demonstrations,
  configs/sft-careless-small.toml): untrained 0.28 [0.19, 0.37] (0.33), 0.699; likelihood RM at lr 1e-4: 0.32
  [0.23, 0.41] (0.38), 0.725.

Preference training adds 3-4 points of accuracy and a few points of capture, within the intervals; no judge
reaches issue 21's 50%. (With the first calibration, by the mean and standard deviation of the scores, training
hardly moved the loss: best-of-8 capture 0.30 from the careless backbone at lr 1e-4, 0.37 from the other at 3e-5.)
"""

import argparse
import json
from pathlib import Path

import datasets
import torch

from llama_course.alignment.rejection import (
    expected_order_statistic,
    log_likelihood_scorer,
    reward_model_scorer,
    sample_responses,
)
from llama_course.alignment.reward_train import RewardConfig, save_reward_model, train_reward_model
from llama_course.alignment.sft import load_base_model
from llama_course.evaluation import bootstrap_mean
from llama_course.toyworld import Annotator, generate_tasks, helpfulness

COLUMNS = ["prompt", "chosen", "rejected", "strength", "score_chosen", "score_rejected"]


def annotated_pairs(prompts: list[str], samples: list[list[str]], seed: int) -> list[dict]:
    """Samples paired two by two within each prompt, labelled by noisy annotators; empty or equal answers dropped."""
    annotator, rows = Annotator("helpfulness", seed=seed, noise_scale=1.0), []
    for prompt, answers in zip(prompts, samples, strict=True):
        for a, b in zip(answers[0::2], answers[1::2], strict=True):
            if a.strip() and b.strip() and a != b:
                preference = vars(annotator.compare(prompt, a, b))
                rows.append({"prompt": prompt} | {column: preference[column] for column in COLUMNS[1:]})
    return rows


def measure(scores: torch.Tensor, truth: torch.Tensor) -> dict:
    """Pairwise accuracy where the truth differs, and the best-of-N capture (N = 4, 8) with intervals."""
    differs = truth[:, :, None] != truth[:, None, :]
    agrees = ((scores[:, :, None] > scores[:, None, :]) == (truth[:, :, None] > truth[:, None, :])) & differs
    result = {"accuracy": float(agrees.sum() / differs.sum()), "pairs": int(differs.sum()) // 2}
    one = truth.mean(dim=1)
    for n in (4, 8):
        oracle = expected_order_statistic(truth, n, n)
        picked = expected_order_statistic(scores, n, n, values=truth)
        capture = bootstrap_mean((picked - one).numpy(), denominator=(oracle - one).numpy())
        result[f"best_of_{n}"] = {"one_sample": float(one.mean()), "oracle": float(oracle.mean()),
                                  "picked": float(picked.mean()), "captured": capture.rate,
                                  "captured_interval": [capture.low, capture.high]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", required=True, help="the RMs' starting model (shipped name or folder)")
    parser.add_argument("--policy", default="runs/careless/sft-0.5-model")
    parser.add_argument("--train-samples", type=Path, default=Path("runs/careless/rs-samples.json"))
    parser.add_argument("--test-samples", type=Path, default=Path("runs/careless/held-out-samples-8.json"))
    parser.add_argument("--lr", type=float, action="append", default=None, help="a likelihood RM's learning rate")
    parser.add_argument("--scalar-lr", type=float, action="append", default=[], help="a scalar RM's learning rate")
    args = parser.parse_args()
    policy, tokenizer = load_base_model(args.policy)
    if args.test_samples.is_file():
        test_prompts, test_samples = json.loads(args.test_samples.read_text())
    else:
        test_prompts = list(generate_tasks(300, seed=424_242)["prompt"])
        test_samples = sample_responses(policy, tokenizer, test_prompts, 8, 0.8, max_new_tokens=48, seed=11)
        args.test_samples.write_text(json.dumps([test_prompts, test_samples]))
    flat_prompts = [p for p, row in zip(test_prompts, test_samples, strict=True) for _ in row]
    flat = [a for row in test_samples for a in row]
    truth = torch.tensor([helpfulness(p, a) for p, a in zip(flat_prompts, flat, strict=True)]).view(300, 8)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    train_prompts, train_samples = json.loads(args.train_samples.read_text())
    train = datasets.Dataset.from_list(annotated_pairs(train_prompts, train_samples, seed=0))
    held_out = datasets.Dataset.from_list(annotated_pairs(test_prompts[:100], [r[:2] for r in test_samples[:100]], 1))
    name = Path(args.backbone).name
    judges = {f"log-likelihood under {name}, untrained": None}
    judges |= {f"likelihood RM from {name}, lr {lr:g}": ("likelihood", lr) for lr in (args.lr or [3e-5, 1e-4])}
    judges |= {f"scalar RM from {name}, lr {lr:g}": ("scalar", lr) for lr in args.scalar_lr}
    for judge, recipe in judges.items():
        if judge in results:
            continue
        if recipe is None:
            score = log_likelihood_scorer(load_base_model(args.backbone)[0].eval(), tokenizer)
        else:
            head, lr = recipe
            folder = Path(f"runs/careless/{head}-rm-{name}-{lr:g}")
            config = RewardConfig(base=args.backbone, head=head, lr=lr, epochs=1.0, output_dir=str(folder) + "-run")
            rm, _, card = train_reward_model(config, (train, held_out))
            save_reward_model(rm, folder, card)
            score = reward_model_scorer(rm, tokenizer)
        scores = score(flat_prompts, flat).view(300, 8).double()
        results[judge] = measure(scores, truth) | {"training_pairs": len(train)}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        best = results[judge]["best_of_8"]
        print(f"{judge}: accuracy {results[judge]['accuracy']:.3f}, best-of-8 picks {best['picked']:.3f} (one sample "
              f"{best['one_sample']:.3f}, oracle {best['oracle']:.3f}), captures {best['captured']:.2f} "
              f"[{best['captured_interval'][0]:.2f}, {best['captured_interval'][1]:.2f}]", flush=True)


if __name__ == "__main__":
    main()
