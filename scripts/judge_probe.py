"""How well can a judge rank the SFT policy's own answers? The measurement behind issue 21's choice of lever.

The shipped SFT model answers held-out tasks 4 times each (T = 0.7); every pair of answers whose TRUE
helpfulness differs is a test pair. Judges, each scored by the share of test pairs it orders as the truth does
(by task family) and by the share of the oracle's best-of-4 gain its pick captures:

- the shipped helpfulness RM (trained on off-policy pairs);
- RMs trained on on-policy pairs (1,500 other tasks x 4 samples, labelled by the truth, small margin, 2 epochs)
  from three backbones: the shipped SFT model (1M parameters), the larger SFT model of
  `llama_course/assets/configs/sft-small.toml` (4.95M), and the 1M base fine-tuned on 4x the task data;
- the log-likelihood of the answer under a model (no training): the SFT model and the 4x-data model.

    python scripts/judge_probe.py --out runs/judge_probe.json [--rm NAME=FOLDER ...] [--loglik NAME=FOLDER ...]

(about 15 minutes on 2 CPU cores once the folders exist; the configs under llama_course/assets/configs/ name the
commands that make them). The policy's samples are drawn once and cached (`--cache`).
"""

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import datasets
import torch

from llama_course.alignment.rejection import (
    expected_order_statistic,
    log_likelihood_scorer,
    reward_model_scorer,
    sample_responses,
)
from llama_course.alignment.reward_train import RewardConfig, load_reward_model, train_reward_model
from llama_course.alignment.sft import load_base_model
from llama_course.toyworld import Annotator, generate_tasks, helpfulness

COLUMNS = ["prompt", "chosen", "rejected", "strength", "score_chosen", "score_rejected"]


def sampled(policy, tokenizer, n, seed, k=4):
    tasks = generate_tasks(n, seed=seed)
    return list(tasks["prompt"]), list(tasks["category"]), sample_responses(policy, tokenizer, list(tasks["prompt"]),
                                                                            k, 0.7, seed=seed)


def pairs_of(prompts, families, samples):
    """Every pair of distinct, non-empty answers to one prompt with different true helpfulness, truth-labelled."""
    annotator, rows = Annotator("helpfulness", seed=0, noise_scale=0.0), []
    for prompt, family, answers in zip(prompts, families, samples, strict=True):
        for a, b in itertools.combinations(answers, 2):
            if a.strip() and b.strip() and a != b and helpfulness(prompt, a) != helpfulness(prompt, b):
                rows.append(vars(annotator.compare(prompt, a, b)) | {"prompt": prompt, "family": family})
    return rows


def measure(score, test_pairs, prompts, samples):
    chosen = score([r["prompt"] for r in test_pairs], [r["chosen"] for r in test_pairs])
    rejected = score([r["prompt"] for r in test_pairs], [r["rejected"] for r in test_pairs])
    correct = [(c > r) == (row["score_chosen"] > row["score_rejected"])
               for c, r, row in zip(chosen.tolist(), rejected.tolist(), test_pairs, strict=True)]
    by_family = defaultdict(list)
    for ok, row in zip(correct, test_pairs, strict=True):
        by_family[row["family"]].append(ok)
    flat_prompts = [p for p, answers in zip(prompts, samples, strict=True) for _ in answers]
    flat = [a for answers in samples for a in answers]
    truth = torch.tensor([helpfulness(p, a) for p, a in zip(flat_prompts, flat, strict=True)]).view(len(prompts), -1)
    kept = [i for i, a in enumerate(flat) if a.strip()]
    scores = torch.full((len(flat),), -1e9)
    scores[kept] = score([flat_prompts[i] for i in kept], [flat[i] for i in kept]).float()
    scores = scores.view(len(prompts), -1)
    n1, oracle = truth.mean(), expected_order_statistic(truth, 4, 4).mean()
    picked = expected_order_statistic(scores, 4, 4, values=truth).mean()
    return {"accuracy": sum(correct) / len(correct), "pairs": len(correct),
            "by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
            "best_of_4": {"n1": float(n1), "oracle": float(oracle), "picked": float(picked),
                          "captured": float((picked - n1) / (oracle - n1))}}


def named_folders(values: list[str]) -> dict[str, str]:
    """`NAME=FOLDER` pairs from the command line."""
    pairs = dict(value.split("=", 1) for value in values if "=" in value)
    if len(pairs) != len(values):
        raise SystemExit(f"expected NAME=FOLDER, got {values}")
    return pairs


def cached_samples(policy, tokenizer, cache: Path) -> dict:
    """The test and training samples of the SFT policy, drawn once and kept in `cache` (a JSON of strings)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    drawn = {"test": sampled(policy, tokenizer, 300, 4242), "train": sampled(policy, tokenizer, 1500, 777)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(drawn))
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rm", nargs="*", default=["sft=sft", "small sft=runs/sft-small-model",
                                                     "4x-data sft=runs/sft-tiny-more-model"],
                        help="NAME=FOLDER: train an RM from this backbone on the on-policy pairs")
    parser.add_argument("--loglik", nargs="*", default=["sft=sft", "4x-data sft=runs/sft-tiny-more-model"],
                        help="NAME=FOLDER: judge by the answer's log-likelihood under this model")
    parser.add_argument("--rm-lr", type=float, default=5e-4)
    parser.add_argument("--rm-epochs", type=float, default=2.0)
    parser.add_argument("--cache", type=Path, default=Path("runs/judge-probe-samples.json"))
    args = parser.parse_args()
    policy, tokenizer = load_base_model("sft")
    drawn = cached_samples(policy, tokenizer, args.cache)
    test_prompts, test_families, test_samples = drawn["test"]
    test_pairs = pairs_of(test_prompts, test_families, test_samples)
    train = datasets.Dataset.from_list([{c: r[c] for c in COLUMNS} for r in pairs_of(*drawn["train"])])
    held_out = datasets.Dataset.from_list([{c: r[c] for c in COLUMNS} for r in test_pairs[:50]])
    judges = {"shipped RM (off-policy pairs)": reward_model_scorer(load_reward_model("helpfulness")[0], tokenizer)}
    for name, backbone in named_folders(args.rm).items():
        config = RewardConfig(base=backbone, epochs=args.rm_epochs, lr=args.rm_lr,
                              output_dir=f"runs/judge-probe-rm-{name.replace(' ', '-')}")
        rm, _, _ = train_reward_model(config, (train, held_out))
        judges[f"RM on {len(train)} on-policy pairs from {name}"] = reward_model_scorer(rm, tokenizer)
    for name, folder in named_folders(args.loglik).items():
        judges[f"log-likelihood under {name}"] = log_likelihood_scorer(load_base_model(folder)[0].eval(), tokenizer)
    results = {name: measure(score, test_pairs, test_prompts, test_samples) for name, score in judges.items()}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, result in results.items():
        print(f"{name}: accuracy {result['accuracy']:.3f} on {result['pairs']} pairs, best-of-4 captures "
              f"{result['best_of_4']['captured']:.2f}; {result['by_family']}")


if __name__ == "__main__":
    main()
