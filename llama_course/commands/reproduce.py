"""`llama-course reproduce [--out DIR] [--smoke]`: the whole course from nothing, in one resumable run.

Each step builds its config object from the recipe the package ships and calls the package (the function behind a
command where the command adds the toy world's prompts and exports), so the run rebuilds what the chapters load:

 1. tokenizer       build-tokenizer (the toy world's SentencePiece), compared byte for byte with the shipped one;
 2. base            pretrain with `assets/base/pretrain.toml`, exported with its validation loss and grammar score;
 3. sft             sft with `assets/sft/sft.toml` and its all-tokens ablation, with held-out helpfulness;
 4. rm_helpfulness  train-rm --margin-study with the `reward_config` of the shipped RM's card (Table 28);
 5. rm_safety       train-rm with the `reward_config` of the shipped safety RM's card;
 6. rejection       rejection-sample with the loop of `assets/rejection_results.json` (chapter 12), exported;
 7. ppo             ppo with the command's defaults, rewarded by this run's two reward models;
 8. gatt            gatt with the settings of `assets/gatt_results.json` (chapter 14), exported;
 9. evaluation      evaluate every model above side by side (chapter 15), the helpfulness RM as an extra judge.

Every model lands in `DIR/<step>/` in the layout of `llama_course/assets/` (so `load_pretrained_folder` and
`llama-course evaluate` read it), and `DIR/report.json` and `DIR/report.md` give each chapter's headline number.
`DIR/evaluation_results.json` (the evaluation with the report under "pipeline") is what the package ships as
`llama_course/assets/evaluation_results.json` for chapter 15.

Resuming: the steps run under the resumable runner of `llama_course/pipeline.py` (its docstring tells how): each
step publishes its folder atomically and then marks itself done in `DIR/steps/<step>.json`, a rerun skips the marked
steps and reruns a step when a step it reads from has finished since (e.g. the evaluation once PPO exists, or every
reader of a redone step), and a step whose shipped recipe changed since it ran (a TOML file, or the config in a card
or a results file) stops the run with an error. The training steps also resume inside the trainer from their
checkpoints under `DIR/runs/`. A folder resumes only in the mode it was started in: `--smoke` shrinks every size, so
that the whole chain runs in about a minute: for tests, not for results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_course.pipeline import Pipeline, Step, run_steps, write_json_atomic
from llama_course.pretrained import ASSETS_DIR

if TYPE_CHECKING:
    from llama_course.alignment.reward_train import RewardConfig

RESULTS_FILE = "evaluation_results.json"  # shipped as llama_course/assets/evaluation_results.json
PRETRAIN_RECIPE = ASSETS_DIR / "base" / "pretrain.toml"
SFT_RECIPE = ASSETS_DIR / "sft" / "sft.toml"

# The knobs no shipped recipe fixes (the commands' defaults), and everything shrunk for --smoke.
FULL = {"grammar_samples": 256, "sft_eval_tasks": 300, "pretrain": [], "sft_data": {}, "sft_trainer": {}, "reward": {},
        "rejection": {}, "rejection_prompts": {}, "ppo": {}, "ppo_prompts": {}, "gatt": {}, "evaluate": []}
SMOKE = {
    "grammar_samples": 4,
    "sft_eval_tasks": 8,
    "pretrain": ["trainer.steps=4", "trainer.warmup_steps=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
                 "trainer.eval_batches=1", "trainer.micro_batch_size=2", "trainer.progress=false",
                 "data.documents=40", "data.validation_documents=8"],
    "sft_data": {"tasks": 40, "multi_turn": 4, "dialogues": 8, "safety": 8, "validation": 30},
    "sft_trainer": {"micro_batch_size": 2},
    "reward": {"pairs": 32, "sampled_pairs": 4, "held_out": 24, "batch_size": 8},
    "rejection": {"iterations": 1, "samples": 2, "steps": 1, "max_new_tokens": 8, "batch_size": 2, "block_size": 32},
    "rejection_prompts": {"prompts": 4, "held_out": 4},
    "ppo": {"iterations": 1, "batch_size": 4, "minibatch_size": 2, "chunk_size": 4, "max_new_tokens": 6},
    "ppo_prompts": {"prompts": 8},
    "gatt": {"dialogues": 3, "train_turns": [2, 3], "answers": "reference", "sft_mix": 4, "eval_dialogues": 2,
             "eval_turns": 2, "recall_turns": [1, 2], "eval_tasks": 4, "attention_dialogues": 1, "max_new_tokens": 6,
             "batch_size": 4},
    "evaluate": ["--prompts", "6", "--safety-prompts", "4", "--max-new-tokens", "8", "--resamples", "100"],
}


def _card(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())["card"]


# ----- the steps ---------------------------------------------------------------------------------------------------
def tokenizer_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.toyworld.assets import TOY_TOKENIZER_PATH
    from llama_course.toyworld.build_tokenizer import build_toy_tokenizer

    path = pipeline.partial("tokenizer") / TOY_TOKENIZER_PATH.name
    tokenizer = build_toy_tokenizer(path)
    # Every later step reads the package's tokenizer (`toy_tokenizer()`): the rebuilt one must be the same file.
    identical = path.read_bytes() == TOY_TOKENIZER_PATH.read_bytes()
    pipeline.publish("tokenizer")
    return {"pieces": tokenizer.vocab_size, "identical_to_shipped": identical}


def base_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.experiments.toyworld_data import pretraining_data
    from llama_course.pretrained import export_pretrained
    from llama_course.training.pretrain import load_config, run_pretraining

    recipe = PRETRAIN_RECIPE
    run_dir = pipeline.path("runs", "base")
    config = load_config(recipe, [f"output_dir={json.dumps(str(run_dir))}", *pipeline.sizes["pretrain"]])
    # resumes from the newest checkpoint in run_dir; SIGINT / SIGTERM save and raise
    run_pretraining(config, pretraining_data(config.data))
    folder = pipeline.partial("base")
    card = export_pretrained(run_dir, folder, samples=pipeline.sizes["grammar_samples"])["card"]
    shutil.copyfile(recipe, folder / recipe.name)
    shutil.copyfile(run_dir / "metrics.jsonl", folder / "metrics.jsonl")
    pipeline.publish("base")
    return {"steps": card["steps"], "training_tokens": card["training_tokens"],
            "validation_loss": card["validation_loss"], "grammar_score": card["grammar_score"]["fraction"]}


def sft_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.alignment.sft import load_sft_config, load_sft_results
    from llama_course.experiments.sft import measure_and_export

    recipe = SFT_RECIPE
    config = load_sft_config(recipe)
    config = dataclasses.replace(config, base=str(pipeline.path("base")), output_dir=str(pipeline.path("runs", "sft")),
                                 data=dataclasses.replace(config.data, **pipeline.sizes["sft_data"]),
                                 trainer=dataclasses.replace(config.trainer, **pipeline.sizes["sft_trainer"]))
    folder = pipeline.partial("sft")
    measure_and_export(config, folder, eval_tasks=pipeline.sizes["sft_eval_tasks"], ablation=True)
    shutil.copyfile(recipe, folder / recipe.name)
    results = load_sft_results(folder)
    pipeline.publish("sft")
    return {"validation_answer_loss": {name: curves["val_loss"][-1] for name, curves in results["curves"].items()},
            "helpfulness": {name: scores["all"] for name, scores in results["helpfulness"].items()}}


def reward_recipe(criterion: str) -> dict[str, Any]:
    """The `reward_config` of the shipped RM's card, less where it read and wrote (`base`, `output_dir`)."""
    from llama_course.alignment.reward_train import SHIPPED_RMS, reward_card

    shipped = reward_card(SHIPPED_RMS[criterion])["reward_config"]
    return {key: value for key, value in shipped.items() if key not in ("base", "output_dir")}


def _reward_config(pipeline: Pipeline, criterion: str) -> RewardConfig:
    from llama_course.alignment.reward_train import RewardConfig

    return RewardConfig(**reward_recipe(criterion) | pipeline.sizes["reward"], base=str(pipeline.path("sft")),
                        output_dir=str(pipeline.path("runs", f"rm-{criterion}")))


def _accuracy(held_out: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": held_out["accuracy"],
            "by_strength": {strength: row["accuracy"] for strength, row in held_out["by_strength"].items()}}


def rm_helpfulness_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.alignment.reward_train import margin_study
    from llama_course.experiments.toyworld_data import reward_data

    folder = pipeline.partial("rm_helpfulness")
    config = _reward_config(pipeline, "helpfulness")
    study = margin_study(config, reward_data(config), folder)
    card = _card(folder)
    pipeline.publish("rm_helpfulness")
    return {**_accuracy(card["held_out"]),
            "margins": {margin: _accuracy(result) for margin, result in study["margins"].items()}}


def rm_safety_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.alignment.reward_train import held_out_summary, save_reward_model, train_reward_model
    from llama_course.experiments.toyworld_data import reward_data

    config = _reward_config(pipeline, "safety")
    model, _, card = train_reward_model(config, reward_data(config))
    folder = pipeline.partial("rm_safety")
    save_reward_model(model, folder, card | {"held_out": held_out_summary(card["held_out"])})
    pipeline.publish("rm_safety")
    return _accuracy(card["held_out"])


def rejection_recipe() -> dict[str, Any]:
    """The loop of chapter 12's shipped run (`assets/rejection_results.json`)."""
    from llama_course.experiments.rejection_sampling import load_rejection_results

    return load_rejection_results()["config"]


def rejection_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.alignment.rejection import RejectionConfig
    from llama_course.commands.rejection_sample import rejection_sample

    config = RejectionConfig(**rejection_recipe() | pipeline.sizes["rejection"])
    folder = pipeline.partial("rejection")
    rejection_sample(config, str(pipeline.path("sft")), str(pipeline.path("rm_helpfulness")),
                     str(pipeline.path("runs", "rejection")), export=folder, **pipeline.sizes["rejection_prompts"])
    history = _card(folder)["history"]
    pipeline.publish("rejection")
    first = history[1]
    # Best-of-N gain: the RM score of the kept answer (best of K) over the mean of all K, in the first round.
    return {"best_of_n_gain_rm": first["kept_rm"] - first["sampled_rm"],
            "held_out_rm": [row["rm"] for row in history], "held_out_true": [row["true"] for row in history]}


def ppo_step(pipeline: Pipeline) -> dict[str, Any]:
    """PPO from this run's SFT model, rewarded by this run's two reward models (chapter 13's command defaults)."""
    from llama_course.alignment.ppo_train import PPOConfig
    from llama_course.commands.ppo import ppo
    from llama_course.training.metrics import read_metrics

    folder, run_dir = pipeline.partial("ppo"), pipeline.path("runs", "ppo")
    ppo(PPOConfig(**pipeline.sizes["ppo"]), str(pipeline.path("sft")), str(pipeline.path("rm_helpfulness")),
        str(pipeline.path("rm_safety")), str(run_dir), save=folder, **pipeline.sizes["ppo_prompts"])
    rows = [row for row in read_metrics(run_dir) if "true_combined" in row]  # one row per iteration
    pipeline.publish("ppo")
    return {"true_reward": [rows[0]["true_combined"], rows[-1]["true_combined"]], "kl": rows[-1]["kl_k1"]}


GATT_FLAGS = ("dialogues", "train_turns", "answers", "samples_per_turn", "temperature", "sft_mix", "epochs", "lr",
              "batch_size", "eval_dialogues", "eval_turns", "recall_turns", "eval_tasks", "attention_dialogues",
              "max_new_tokens")
GATT_RESULTS_FILE = "gatt_results.json"


def gatt_recipe() -> dict[str, Any]:
    """The settings of chapter 14's shipped run (`GAttConfig`'s defaults are that run's), less where it wrote; one
    seed."""
    from llama_course.experiments.gatt import GAttConfig

    recipe = GAttConfig().to_dict()
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in recipe.items() if key in (*GATT_FLAGS, "base")}


def gatt_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.commands.gatt import gatt
    from llama_course.experiments.gatt import GAttConfig

    shipped = gatt_recipe() | pipeline.sizes["gatt"]
    base = pipeline.path(shipped["base"])
    if not (base / "config.json").is_file():
        raise ValueError(f"GAtt starts from {shipped['base']!r} (assets/gatt_results.json): no model of that name "
                         f"in {pipeline.out}")
    folder = pipeline.partial("gatt")
    config = GAttConfig(**{key: tuple(value) if isinstance(value, list) else value
                           for key, value in shipped.items() if key in GATT_FLAGS}, base=str(base))
    gatt(config, [0], str(pipeline.path("runs", "gatt")), results=folder / GATT_RESULTS_FILE, export=folder)
    results = json.loads((folder / GATT_RESULTS_FILE).read_text())
    pipeline.publish("gatt")
    return {"recall_by_turn": {name: results[name]["recall_by_turn"] for name in ("base", "control", "gatt")
                               if name in results}}


EVALUATED_MODELS = ("base", "sft", "rejection", "ppo", "gatt")


def evaluation_step(pipeline: Pipeline) -> dict[str, Any]:
    from llama_course.commands import evaluate

    models = [f"{name}={pipeline.path(name)}" for name in EVALUATED_MODELS
              if pipeline.path(name, "config.json").is_file()]
    folder = pipeline.partial("evaluation")
    pipeline.command(evaluate, [*models, "--reward-model", pipeline.path("rm_helpfulness"), "--out", folder,
                                *pipeline.sizes["evaluate"]])
    report = json.loads((folder / evaluate.REPORT_FILE).read_text())
    pipeline.publish("evaluation")
    return {
        "models": {name: {"helpfulness": model["helpfulness"], "violation_rate": model["violation_rate"]["rate"]}
                   for name, model in report["models"].items()},
        "win_rates": {f"{c['model_a']} vs {c['model_b']}": {outcome: c["raters"]["rates"][outcome]["rate"]
                                                            for outcome in ("win", "tie", "loss")}
                      for c in report["comparisons"]},
        "reward_model_matches_true_judge": {f"{c['model_a']} vs {c['model_b']}": c["reward_model"]["matches_true_judge"]
                                            for c in report["comparisons"]},
    }


STEPS = (
    Step("tokenizer", tokenizer_step),
    Step("base", base_step, ("tokenizer",), PRETRAIN_RECIPE.read_text),
    Step("sft", sft_step, ("base",), SFT_RECIPE.read_text),
    Step("rm_helpfulness", rm_helpfulness_step, ("sft",), functools.partial(reward_recipe, "helpfulness")),
    Step("rm_safety", rm_safety_step, ("sft",), functools.partial(reward_recipe, "safety")),
    Step("rejection", rejection_step, ("sft", "rm_helpfulness"), rejection_recipe),
    Step("ppo", ppo_step, ("sft", "rm_helpfulness", "rm_safety")),
    Step("gatt", gatt_step, ("sft",), gatt_recipe),
    Step("evaluation", evaluation_step, ("rm_helpfulness", *EVALUATED_MODELS)),
)


# ----- the report ---------------------------------------------------------------------------------------------------
def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _series(values: Sequence[Any]) -> str:
    return " / ".join(_number(value) for value in values)


def headline_rows(steps: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(chapter, measure, value) rows of the Markdown report, from each step's headline numbers."""
    rows = []

    def add(name: str, chapter: str, measures: Callable[[dict[str, Any]], list[tuple[str, str]]]) -> None:
        status = steps.get(name, {"status": "not run"})
        if status["status"] != "done":
            rows.append((chapter, f"step {name}", status.get("reason", status["status"])))
            return
        rows.extend((chapter, measure, value) for measure, value in measures(status["summary"]))

    add("tokenizer", "1 Tokenizer", lambda s: [("pieces; byte-identical to the shipped tokenizer",
                                               f"{s['pieces']}; {s['identical_to_shipped']}")])
    add("base", "8 Pretraining", lambda s: [("validation loss", _number(s["validation_loss"])),
                                           ("grammar score of sampled stories (T = 1)", _number(s["grammar_score"]))])
    add("sft", "10 SFT", lambda s: [("held-out helpfulness: " + " / ".join(s["helpfulness"]), _series(
        s["helpfulness"].values())), ("validation answer loss: " + " / ".join(s["validation_answer_loss"]),
                                      _series(s["validation_answer_loss"].values()))])
    for name in ("rm_helpfulness", "rm_safety"):
        add(name, "11 Reward models", lambda s, name=name: [(
            f"{name} accuracy, all / by strength (significantly ... negligibly)",
            f"{_number(s['accuracy'])} / {_series(s['by_strength'].values())}")])
    add("rejection", "12 Rejection sampling", lambda s: [
        ("best-of-N gain, RM score (kept answer - mean of K)", _number(s["best_of_n_gain_rm"])),
        ("held-out RM score by iteration", _series(s["held_out_rm"])),
        ("held-out true reward by iteration", _series(s["held_out_true"]))])
    add("ppo", "13 PPO", lambda s: [("true reward, first / last iteration; KL (k1), last",
                                     f"{_series(s['true_reward'])}; {_number(s['kl'])}")])
    add("gatt", "14 Ghost Attention", lambda s: [
        (f"{name}: constraint recall at turns 2, 4, 6, ... (Table 30)", _series(recall[1::2]))
        for name, recall in s["recall_by_turn"].items()])
    add("evaluation", "15 Evaluation", lambda s: [
        *((f"{pair}: win / tie / loss (3 raters); RM judge agrees with the true judge",
           f"{_series(rates.values())}; {_number(s['reward_model_matches_true_judge'][pair])}")
          for pair, rates in s["win_rates"].items()),
        *((f"{name}: helpfulness / violation rate", f"{_number(m['helpfulness'])} / {_number(m['violation_rate'])}")
          for name, m in s["models"].items())])
    return rows


def write_report(out: Path, steps: dict[str, dict[str, Any]], *, smoke: bool) -> dict[str, Any]:
    """`out/report.json` (every step's status and headline numbers) and `out/report.md`; returns the report."""
    seconds = sum(status.get("seconds", 0.0) for status in steps.values())
    report = {"out": str(out), "smoke": smoke, "seconds": seconds, "steps": steps}
    write_json_atomic(out / "report.json", report)
    lines = ["# The course, reproduced" + (" (smoke sizes: not results)" if smoke else ""), "",
             f"`llama-course reproduce --out {out}`{' --smoke' if smoke else ''}: {seconds / 60:.1f} minutes of steps.",
             "", "| chapter | measure | value |", "|---|---|---|"]
    lines += [f"| {chapter} | {measure} | {value} |" for chapter, measure, value in headline_rows(steps)]
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {status['status']}{': ' + status['reason'] if 'reason' in status else ''} | "
              f"{status.get('seconds', '')} |" for name, status in steps.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if steps.get("evaluation", {}).get("status") == "done":  # what chapter 15 plots, with the run behind it
        from llama_course.commands.evaluate import REPORT_FILE

        evaluation = json.loads((out / "evaluation" / REPORT_FILE).read_text())
        write_json_atomic(out / RESULTS_FILE, evaluation | {"pipeline": report})
    return report


# ----- running them ------------------------------------------------------------------------------------------------
def run_pipeline(out: str | Path, *, smoke: bool = False, steps: Sequence[Step] = STEPS) -> dict[str, Any]:
    """Run every step not done yet, in order (`llama_course.pipeline.run_steps`), then write `report.json` and
    `report.md`; returns the report.

    A pending step (`StepPending`) is reported and skipped; any other error stops the run with the steps before
    it marked done, so that the same call resumes.
    """
    pipeline = Pipeline(out, SMOKE if smoke else FULL, {"smoke": smoke})
    return write_report(pipeline.out, run_steps(pipeline, steps), smoke=smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course reproduce` flags."""
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                        help="folder for every model, run and the report; rerun with the same folder to resume")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes everywhere: checks the chain in a minute")


def run(args: argparse.Namespace) -> None:
    """Run `llama-course reproduce`."""
    report = run_pipeline(args.out, smoke=args.smoke)
    print(f"report: {args.out / 'report.md'} ({report['seconds']:.0f} s of steps)")
