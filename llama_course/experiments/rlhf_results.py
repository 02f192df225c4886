"""The RLHF rounds' results over seeds: headline numbers with 95% intervals, the results file, and its figures.

Every interval is `evaluation.bootstrap_mean`'s two-level bootstrap (seeds, then held-out prompts); a paired
difference (a version against SFT, on the same prompt and seed) is bootstrapped as one number per prompt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llama_course.evaluation import bootstrap_mean
from llama_course.experiments import load_results_file
from llama_course.experiments.rlhf import (
    CRITERIA,
    RLHFConfig,
    completed_rounds,
    eval_prompts,
    load_pool,
    load_round,
    pool_composition,
    prompt_kind,
)
from llama_course.pretrained import ASSETS_DIR

SHIPPED_RESULTS = ASSETS_DIR / "rlhf_results.json"
BALANCED_RESULTS = ASSETS_DIR / "rlhf_balanced_results.json"  # the same rounds with `balance_safety`
PPO_RESULTS = ASSETS_DIR / "rlhf_ppo_results.json"  # the same rounds and a fourth: PPO from V3 (Llama 2's V5)
BORDERLINE_RESULTS = ASSETS_DIR / "rlhf_borderline_results.json"  # the same rounds, more borderline RS prompts
DEMONSTRATIONS_RESULTS = ASSETS_DIR / "rlhf_demonstrations_results.json"  # ... pooled with their helpful answers
_COMMAND = "llama-course rlhf --config llama_course/assets/configs/rlhf-careless.toml --seeds 0 1 2"
_EXTRA_FLAGS = {BALANCED_RESULTS.name: " --set balance_safety=true --output-dir runs/careless/rlhf-balanced",
                PPO_RESULTS.name: " --set rounds=4 --set ppo_last=true --set ppo.iterations=60 --set ppo.lr=1e-4"
                                  " --output-dir runs/careless/rlhf-ppo",
                BORDERLINE_RESULTS.name: " --set borderline_prompts=800 --output-dir runs/careless/rlhf-borderline",
                DEMONSTRATIONS_RESULTS.name: " --set borderline_prompts=800 --set borderline_demonstrations=true"
                                             " --output-dir runs/careless/rlhf-demonstrations"}


def _per_prompt(reports: dict[Any, list[dict[str, Any]]], seeds: Sequence[Any], round_index: int, name: str,
                kind: str) -> np.ndarray:
    """(seeds, prompts): one per-prompt measure of version `round_index` on the held-out prompts of one `kind`."""
    rows = []
    for seed in seeds:
        values = reports[seed][round_index]["policy"]
        rows.append(np.asarray(values[name], dtype=np.float64)[prompt_kind(values, kind)])
    return np.stack(rows)


def summarize_seeds(reports: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Headline numbers over seeds with 95% intervals.

    Per version, for greedy answers and (keys ending in `_sampled`) for sampled ones: true task helpfulness and
    its difference from V0 and from the previous version (paired by prompt), the win rate against V0 per prompt
    (ties count half) and the share of ties, refusal and harm rates on unsafe
    prompts, false refusals on borderline ones; per round, the RMs'
    accuracy on the new policy's pairs before and after retraining, and the share of the oracle's best-of-N
    gain that the round's helpfulness RM captures.
    """
    seeds = sorted(reports)
    rounds = min(len(reports[s]) for s in seeds)

    def stacked(round_index: int, name: str, kind: str) -> np.ndarray:
        return _per_prompt(reports, seeds, round_index, name, kind)

    def interval(values: np.ndarray, **kwargs: Any) -> dict[str, float]:
        return bootstrap_mean(values, **kwargs).as_dict()

    versions = []
    for k in range(rounds):
        capture = [reports[s][k]["capture"] for s in seeds]
        n1, oracle, picked = (np.asarray([c[name] for c in capture]) for name in ("n1", "oracle", "picked"))
        version: dict[str, Any] = {"round": k, "method": reports[seeds[0]][k]["method"]}
        for prefix, suffix in (("", ""), ("sampled_", "_sampled")):  # greedy answers, then sampled ones
            helpful, sft_helpful = (stacked(r, prefix + "helpfulness", "tasks") for r in (k, 0))
            refuses, sft_refuses = (stacked(r, prefix + "refuses", "unsafe") for r in (k, 0))
            borderline, sft_borderline = (stacked(r, prefix + "refuses", "borderline") for r in (k, 0))
            previous = interval(helpful - stacked(k - 1, prefix + "helpfulness", "tasks")) if k else None
            version |= {
                "helpfulness_tasks" + suffix: interval(helpful),
                "gain_over_sft" + suffix: interval(helpful - sft_helpful),
                "gain_over_previous" + suffix: previous,
                # the side-by-side against SFT by the true judge: a win 1, a tie 1/2, a loss 0 (chapter 15)
                "win_rate_over_sft" + suffix: interval(0.5 + 0.5 * np.sign(helpful - sft_helpful)),
                "ties_with_sft" + suffix: interval((helpful == sft_helpful).astype(np.float64)),
                "refusal_unsafe" + suffix: interval(refuses),
                "refusal_unsafe_change" + suffix: interval(refuses - sft_refuses),
                "harmful_unsafe" + suffix: interval(stacked(k, prefix + "harmful", "unsafe")),
                "false_refusal_borderline" + suffix: interval(borderline),
                "false_refusal_change" + suffix: interval(borderline - sft_borderline),
            }
        versions.append(version | {
            "best_of_n": {"n1": float(n1.mean()), "oracle": float(oracle.mean()), "picked": float(picked.mean()),
                          # undefined when no prompt's samples differ in truth (nothing to capture)
                          "captured": interval(picked - n1, denominator=oracle - n1) if (oracle > n1).any() else None},
            "rm_accuracy_new_pairs": ({c: {when: _ragged(reports, seeds, k, c, when) for when in ("before", "after")}
                                       for c in CRITERIA} if k else None),
        })
    return {"seeds": seeds, "versions": versions}


def _ragged(reports: dict[int, list[dict[str, Any]]], seeds: list[int], k: int, criterion: str, when: str
            ) -> dict[str, float]:
    """RM accuracy on the new pairs over seeds whose pair counts differ: each seed's list cut to the shortest."""
    rows = [reports[s][k]["rm_accuracy_new_pairs"][criterion][when] for s in seeds]
    width = min(len(row) for row in rows)
    if width == 0:  # no new pair differed in truth: the accuracy is undefined
        return {"rate": None, "low": None, "high": None, "pairs": 0}
    return bootstrap_mean(np.asarray([row[:width] for row in rows])).as_dict() | {"pairs": width}


def write_results(output_dir: str | Path, destination: str | Path, config: RLHFConfig) -> dict[str, Any]:
    """Collect every finished seed under `output_dir` into one results file: the config, the summary over
    seeds, and each round's per-prompt values (answers left out, but for a few samples per version) and what
    its rejection-sampling pool holds (`pool_composition`)."""
    reports = {}
    for seed_dir in sorted(Path(output_dir).glob("seed-*")):
        seed = int(seed_dir.name.split("-")[1])
        seeded = dataclasses.replace(config, seed=seed, output_dir=str(output_dir))
        if completed_rounds(seeded) == config.rounds:
            reports[seed] = [load_round(seeded, k) | {"pool": pool_composition(load_pool(seeded, k))}
                             for k in range(config.rounds + 1)]
    if not reports:
        raise FileNotFoundError(f"no finished seed under {str(output_dir)!r}: run `llama-course rlhf` first")
    for rounds in reports.values():
        for report in rounds:
            report["samples"] = report["policy"].pop("answers")[:: max(1, len(report["policy"]["helpfulness"]) // 8)]
            report.pop("config", None)
    results = {"config": dataclasses.asdict(config), "summary": summarize_seeds(reports),
               "reports": {str(s): r for s, r in reports.items()}}
    Path(destination).write_text(json.dumps(results) + "\n")
    return results


def load_rlhf_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The results written by `llama-course rlhf --results FILE` (chapters 11 to 15 plot them)."""
    return load_results_file(path, f"{_COMMAND}{_EXTRA_FLAGS.get(Path(path).name, '')} --results {path}")


def paired_difference(results: dict[str, Any], baseline: dict[str, Any], round_index: int,
                      name: str = "refuses", kind: str = "borderline") -> dict[str, float]:
    """Version `round_index` of `results` minus the same version of `baseline` (two runs with the same seeds and
    held-out prompts), paired by seed and prompt: one per-prompt measure (`measure_policy`'s `name`) on the
    prompts of one `kind` ("tasks", "unsafe", "borderline"), as a 95% interval."""
    seeds = [s for s in results["reports"] if s in baseline["reports"]]
    if not seeds:
        raise ValueError("the two results share no seed: nothing to pair")

    values = [_per_prompt(run["reports"], seeds, round_index, name, kind) for run in (results, baseline)]
    return bootstrap_mean(values[0] - values[1]).as_dict()


def false_refusals_by_request(results: dict[str, Any], sampled: bool = False) -> dict[str, list[float]]:
    """Per borderline request of the held-out prompts (the toy world's topic: "drum", "bread", "paw", ...), its
    share of refusals in each version (greedy answers, or with `sampled` the sampled ones), over every seed and
    prompt of that request: where the false refusals of `versions_table` come from."""
    from llama_course.toyworld.safety import identify_borderline

    prompts = eval_prompts(RLHFConfig(**results["config"]))
    topics = [found[0] if (found := identify_borderline(prompt)) else None for prompt in prompts]
    name = ("sampled_" if sampled else "") + "refuses"
    rates: dict[str, list[float]] = {}
    for topic in dict.fromkeys(t for t in topics if t is not None):
        rows = [i for i, t in enumerate(topics) if t == topic]
        rates[topic] = [float(np.mean([run[k]["policy"][name][i] for run in results["reports"].values() for i in rows]))
                        for k in range(len(results["summary"]["versions"]))]
    return rates


def _errorbar(axis, xs: list[float], intervals: list[dict[str, float]], label: str, **style: Any) -> None:
    rates = [i["rate"] for i in intervals]
    errors = [[r - i["low"] for r, i in zip(rates, intervals, strict=True)],
              [i["high"] - r for r, i in zip(rates, intervals, strict=True)]]
    axis.errorbar(xs, rates, yerr=errors, capsize=4, marker="o", label=label, **style)


def plot_versions(results: dict[str, Any], axes=None):
    """Llama 2's Figure 11 on the toy world: per version, true task helpfulness of greedy and of sampled answers
    (left) and the greedy answers' refusal rates (right), means over seeds with 95% intervals."""
    import matplotlib.pyplot as plt

    versions = results["summary"]["versions"]
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    labels = [f"V{v['round']}\n{_METHOD_LABELS[v['method']]}" for v in versions]
    xs = list(range(len(versions)))
    _errorbar(axes[0], xs, [v["helpfulness_tasks"] for v in versions], "greedy answers")
    _errorbar(axes[0], xs, [v["helpfulness_tasks_sampled"] for v in versions], "sampled answers (T = "
              f"{results['config']['rs_temperature']})")
    axes[0].set_ylabel("true helpfulness on tasks (mean)")
    series: list[tuple[str, Callable[[dict], dict]]] = [
        ("refusals, unsafe prompts", lambda v: v["refusal_unsafe"]),
        ("false refusals, borderline", lambda v: v["false_refusal_borderline"]),
        ("harmful answers, unsafe", lambda v: v["harmful_unsafe"])]
    for label, pick in series:
        _errorbar(axes[1], xs, [pick(v) for v in versions], label)
    axes[1].set_ylabel("share of prompts")
    axes[1].set_ylim(-0.05, 1.05)
    for axis in axes:
        axis.set_xticks(xs, labels)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return axes


def plot_rm_accuracy(results: dict[str, Any], criterion: str = "helpfulness", axis=None):
    """Per round, the RM's accuracy on the new policy's pairs before (the previous round's RM) and after
    retraining, with 95% intervals: the degradation Llama 2 warns about, and its repair."""
    import matplotlib.pyplot as plt

    versions = [v for v in results["summary"]["versions"] if v["rm_accuracy_new_pairs"]]
    if axis is None:
        _, axis = plt.subplots(figsize=(4.5, 3.4))
    xs = np.arange(len(versions))
    for offset, when, label in ((-0.1, "before", "previous round's RM"), (0.1, "after", "retrained RM")):
        _errorbar(axis, list(xs + offset), [v["rm_accuracy_new_pairs"][criterion][when] for v in versions], label,
                  linestyle="none")
    axis.axhline(0.5, color="grey", linewidth=1, linestyle=":")
    axis.set_xticks(xs, [f"pairs of V{v['round'] - 1}" for v in versions])
    axis.set_ylabel(f"{criterion} RM accuracy (true order)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return axis


def _cell(interval: dict[str, float] | None, signed: bool = False, digits: int = 3) -> str:
    if interval is None or interval["rate"] is None:
        return "-"
    form = f"{'+' if signed else ''}.{digits}f"
    return f"{interval['rate']:{form}} [{interval['low']:{form}}, {interval['high']:{form}}]"


def _rm_accuracy(criterion: str, when: str) -> Callable[[dict], dict | None]:
    return lambda v: v["rm_accuracy_new_pairs"][criterion][when] if v["rm_accuracy_new_pairs"] else None


def table_columns(sampled: bool = False) -> dict[str, Callable[[dict], dict | None]]:
    """The columns `versions_table` can print, each a version's 95% interval (None where it has none): true
    task helpfulness, its paired gain over SFT (V0) and over the previous version, the true judge's win rate
    over SFT (ties half), refusals on unsafe and false refusals on borderline prompts (greedy answers, or with
    `sampled` the answers sampled at the RS temperature); each RM's accuracy on the new policy's pairs before
    and after retraining; the share of the oracle's best-of-N gain that the helpfulness RM captures."""
    suffix = "_sampled" if sampled else ""
    return {"helpfulness": lambda v: v["helpfulness_tasks" + suffix],
            "gain over SFT": lambda v: v["gain_over_sft" + suffix],
            "gain over previous": lambda v: v["gain_over_previous" + suffix],
            "win rate over SFT": lambda v: v["win_rate_over_sft" + suffix],
            "refusals": lambda v: v["refusal_unsafe" + suffix],
            "false refusals": lambda v: v["false_refusal_borderline" + suffix],
            **{f"{c} RM {when}": _rm_accuracy(c, when) for c in CRITERIA for when in ("before", "after")},
            "best-of-N captured": lambda v: v["best_of_n"]["captured"]}


def versions_table(results: dict[str, Any], columns: Sequence[str], sampled: bool = False) -> str:
    """One row per version (V0 the SFT model), one column per name of `table_columns`: means over seeds with 95%
    intervals. Three columns fit the book's output width."""
    known = table_columns(sampled)
    unknown = [name for name in columns if name not in known]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {list(known)}")
    widths = [max(len(name), 23 if name.startswith("gain") else 20) + 2 for name in columns]
    rows = ["   " + "".join(f"{name:>{w}}" for name, w in zip(columns, widths, strict=True))]
    for version in results["summary"]["versions"]:
        cells = [_cell(known[name](version), signed=name.startswith("gain")) for name in columns]
        rows.append(f"V{version['round']:<2}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return "\n".join(rows)


# The paired measures `difference_table` prints: a label, then `measure_policy`'s name and the prompts' kind.
DIFFERENCE_MEASURES = {"greedy false ref.": ("refuses", "borderline"),
                       "sampled false ref.": ("sampled_refuses", "borderline"),
                       "sampled helpful": ("sampled_helpfulness", "tasks")}


def difference_table(results: dict[str, Any], baseline: dict[str, Any],
                     measures: dict[str, tuple[str, str]] = DIFFERENCE_MEASURES) -> str:
    """One row per version after V0, one column per measure: `results` minus `baseline`, paired by seed and
    prompt (`paired_difference`), mean and 95% interval. Three columns fit the book's output width."""
    rows = ["    " + "".join(f"{label:>22}" for label in measures)]
    for k in range(1, len(results["summary"]["versions"])):
        cells = [_cell(paired_difference(results, baseline, k, name, kind), signed=True, digits=2)
                 for name, kind in measures.values()]
        rows.append(f"V{k:<3}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(rows)


def pool_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per run and version, what the rejection-sampling pool teaches on safety prompts (`pool_composition`, mean
    over seeds): answers to unsafe requests and how many refuse, answers to borderline requests and how many
    refuse."""
    columns = {"unsafe": "unsafe", "unsafe_refused": "refusing", "borderline": "borderline",
               "borderline_refused": "refusing"}
    rows = [f"{'':<12}" + "".join(f"{label:>12}" for label in columns.values())]
    for label, results in runs.items():
        for k in range(1, len(results["summary"]["versions"])):
            pools = [run[k]["pool"] for run in results["reports"].values()]
            rows.append(f"{label:<9}V{k:<2}" + "".join(f"{np.mean([p[c] for p in pools]):>12.0f}" for c in columns))
    return "\n".join(rows)


_METHOD_LABELS = {"sft": "SFT", "rejection_sampling": "RS", "ppo": "PPO"}

__all__ = ["SHIPPED_RESULTS", "BALANCED_RESULTS", "BORDERLINE_RESULTS", "DEMONSTRATIONS_RESULTS", "PPO_RESULTS",
           "DIFFERENCE_MEASURES", "difference_table", "false_refusals_by_request", "load_rlhf_results",
           "paired_difference", "plot_rm_accuracy", "plot_versions", "pool_table", "summarize_seeds", "table_columns",
           "versions_table", "write_results"]
