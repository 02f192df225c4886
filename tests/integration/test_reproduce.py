"""`llama-course reproduce`: the course's steps in order, resumed where they stopped, reported from their outputs."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from llama_course.cli import SUBCOMMAND_MODULES
from llama_course.commands import evaluate as evaluate_cli
from llama_course.commands.reproduce import STEPS, run_pipeline
from llama_course.evaluation.report import load_evaluation_results
from llama_course.pipeline import Pipeline, Step, StepPending
from llama_course.pretrained import load_pretrained_folder
from llama_course.training.metrics import read_metrics

COURSE_ORDER = ["tokenizer", "base", "sft", "rm_helpfulness", "rm_safety", "rejection", "ppo", "gatt", "evaluation"]


class Interrupted(RuntimeError):
    """Stands for a kill in the middle of a step."""


def test_steps_follow_the_course_and_read_only_earlier_steps():
    assert [step.name for step in STEPS] == COURSE_ORDER
    for index, step in enumerate(STEPS):
        assert set(step.needs) <= set(COURSE_ORDER[:index]), f"{step.name} reads a later step: {step.needs}"


def writing_step(name: str, calls: list[str], *, fail_first: bool = False, needs: tuple[str, ...] = ()) -> Step:
    """A step that writes `DIR/<name>/value.txt`; with `fail_first`, its first call dies half-way."""

    def run(pipeline: Pipeline) -> dict:
        calls.append(name)
        (pipeline.partial(name) / "value.txt").write_text(name)
        if fail_first and calls.count(name) == 1:
            raise Interrupted(name)
        pipeline.publish(name)
        return {"wrote": name, "calls": calls.count(name)}

    return Step(name, run, needs)


def test_a_rerun_skips_finished_steps_and_redoes_the_interrupted_one(tmp_path):
    calls: list[str] = []
    steps = [writing_step("a", calls), writing_step("b", calls, fail_first=True, needs=("a",)),
             writing_step("c", calls, needs=("b",))]
    with pytest.raises(Interrupted):
        run_pipeline(tmp_path, steps=steps)
    assert calls == ["a", "b"]
    assert (tmp_path / "steps" / "a.json").is_file() and not (tmp_path / "steps" / "b.json").exists()
    # b's half-written output stays out of place, so nothing reads it
    assert not (tmp_path / "b").exists() and (tmp_path / ".partial" / "b" / "value.txt").is_file()
    report = run_pipeline(tmp_path, steps=steps)
    assert calls == ["a", "b", "b", "c"]
    assert {name: status["summary"] for name, status in report["steps"].items()} == {
        "a": {"wrote": "a", "calls": 1}, "b": {"wrote": "b", "calls": 2}, "c": {"wrote": "c", "calls": 1}}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert [(tmp_path / name / "value.txt").read_text() for name in "abc"] == ["a", "b", "c"]
    run_pipeline(tmp_path, steps=steps)
    assert calls == ["a", "b", "b", "c"], "a third run has nothing left to do"


def test_a_pending_step_is_retried_and_the_steps_reading_it_rerun_once_it_lands(tmp_path):
    calls: list[str] = []
    landed = False

    def later(pipeline: Pipeline) -> dict:
        calls.append("later")
        if not landed:
            raise StepPending("its command does not exist yet")
        return {}

    steps = [writing_step("a", calls), Step("later", later, ("a",)),
             writing_step("reader", calls, needs=("a", "later"))]
    report = run_pipeline(tmp_path, steps=steps)
    assert report["steps"]["later"] == {"status": "pending", "reason": "its command does not exist yet"}
    assert "its command does not exist yet" in (tmp_path / "report.md").read_text()
    run_pipeline(tmp_path, steps=steps)
    assert calls == ["a", "later", "reader", "later"], "still pending: the reader has nothing new to read"
    landed = True
    run_pipeline(tmp_path, steps=steps)
    assert calls == ["a", "later", "reader", "later", "later", "reader"]


def test_a_redone_step_reruns_its_readers_and_a_changed_recipe_is_refused(tmp_path):
    calls: list[str] = []
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("steps = 1\n")
    steps = [dataclasses.replace(writing_step("a", calls), recipe=recipe.read_text),
             writing_step("b", calls, needs=("a",))]
    out = tmp_path / "out"
    run_pipeline(out, steps=steps)
    (out / "steps" / "a.json").unlink()  # the documented way to redo a step
    run_pipeline(out, steps=steps)
    assert calls == ["a", "b", "a", "b"]
    recipe.write_text("steps = 2\n")
    with pytest.raises(ValueError, match="recipe for step 'a' changed since it ran"):
        run_pipeline(out, steps=steps)
    assert calls == ["a", "b", "a", "b"], "nothing runs on top of outputs of another recipe"


def test_a_folder_is_resumed_only_in_the_mode_it_was_started_in(tmp_path):
    run_pipeline(tmp_path, smoke=True, steps=[])
    with pytest.raises(ValueError, match="smoke"):
        run_pipeline(tmp_path, smoke=False, steps=[])


def card(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["card"]


def test_smoke_run_resumes_after_an_interruption_and_reports_what_its_steps_wrote(tmp_path, one_thread):
    def die(pipeline: Pipeline) -> dict:
        pipeline.partial("rm_safety")
        raise Interrupted("killed while training the safety RM")

    with pytest.raises(Interrupted):
        run_pipeline(tmp_path, smoke=True, steps=[dataclasses.replace(s, run=die) if s.name == "rm_safety" else s
                                                  for s in STEPS])
    marked = sorted(path.stem for path in (tmp_path / "steps").glob("*.json") if path.stem != "pipeline")
    assert marked == sorted(COURSE_ORDER[:4])

    calls = []

    def recorded(step: Step) -> Step:
        def run(pipeline: Pipeline) -> dict:
            calls.append(step.name)
            return step.run(pipeline)

        return dataclasses.replace(step, run=run)

    report = run_pipeline(tmp_path, smoke=True, steps=[recorded(step) for step in STEPS])
    assert calls == COURSE_ORDER[4:], "the steps before the interrupted one are not run again"
    steps = report["steps"]
    ppo_exists = "ppo" in {name for name, _, _ in SUBCOMMAND_MODULES}
    assert steps["ppo"]["status"] == ("done" if ppo_exists else "pending")
    assert all(steps[name]["status"] == "done" for name in COURSE_ORDER if name != "ppo")

    assert steps["tokenizer"]["summary"] == {"pieces": 1024, "identical_to_shipped": True}
    base = steps["base"]["summary"]
    val_losses = [row["val_loss"] for row in read_metrics(tmp_path / "runs" / "base") if "val_loss" in row]
    assert base["validation_loss"] == card(tmp_path / "base")["validation_loss"] == val_losses[-1]
    assert base["grammar_score"] == card(tmp_path / "base")["grammar_score"]["fraction"]
    sft = card(tmp_path / "sft")["held_out_helpfulness"]
    assert steps["sft"]["summary"]["helpfulness"]["answers_only"] == sft["sft"]["all"]
    assert steps["sft"]["summary"]["helpfulness"]["base"] == sft["base"]["all"]
    for name in ("rm_helpfulness", "rm_safety"):
        held_out = card(tmp_path / name)["held_out"]
        assert steps[name]["summary"]["accuracy"] == held_out["accuracy"]
        by_strength = {strength: row["accuracy"] for strength, row in held_out["by_strength"].items()}
        assert steps[name]["summary"]["by_strength"] == by_strength
    assert set(steps["rm_helpfulness"]["summary"]["margins"]) == {"none", "small", "large"}
    history = card(tmp_path / "rejection")["history"]
    assert steps["rejection"]["summary"]["best_of_n_gain_rm"] == history[1]["kept_rm"] - history[1]["sampled_rm"]
    assert steps["rejection"]["summary"]["held_out_true"] == [row["true"] for row in history]
    if ppo_exists:
        iterations = [row for row in read_metrics(tmp_path / "runs" / "ppo") if "true_combined" in row]
        first, last = iterations[0], iterations[-1]
        assert steps["ppo"]["summary"]["true_reward"] == [first["true_combined"], last["true_combined"]]
        assert steps["ppo"]["summary"]["kl"] == iterations[-1]["kl_k1"]
    gatt = json.loads((tmp_path / "gatt" / "gatt_results.json").read_text())
    assert steps["gatt"]["summary"]["recall_by_turn"]["gatt"] == gatt["gatt"]["recall_by_turn"]
    assert card(tmp_path / "gatt")["recall_by_turn"] == gatt["gatt"]["recall_by_turn"]
    evaluation = json.loads((tmp_path / "evaluation" / evaluate_cli.REPORT_FILE).read_text())
    assert set(evaluation["models"]) == {"base", "sft", "rejection", "gatt"} | ({"ppo"} if ppo_exists else set())
    first = evaluation["comparisons"][0]
    pair = f"{first['model_a']} vs {first['model_b']}"
    assert steps["evaluation"]["summary"]["win_rates"][pair]["win"] == first["raters"]["rates"]["win"]["rate"]
    for folder in ("base", "sft", "rejection", "gatt", *(["ppo"] if ppo_exists else [])):
        model, _ = load_pretrained_folder(tmp_path / folder)
        assert sum(p.numel() for p in model.parameters()) == card(tmp_path / "base")["parameters"]
    shipped_form = load_evaluation_results(tmp_path / "evaluation_results.json")
    assert shipped_form["comparisons"] == evaluation["comparisons"] and shipped_form["pipeline"] == report
    markdown = (tmp_path / "report.md").read_text()
    assert f"| 8 Pretraining | validation loss | {base['validation_loss']:.3f} |" in markdown
    assert "smoke sizes" in markdown


def test_evaluate_names_models_given_as_name_equals_folder(tmp_path):
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    args = parser.parse_args(["base", "copy=llama_course/assets/base", "--out", str(tmp_path), "--prompts", "3",
                              "--safety-prompts", "2", "--max-new-tokens", "4", "--resamples", "100"])
    evaluate_cli.run(args)
    report = json.loads((tmp_path / evaluate_cli.REPORT_FILE).read_text())
    assert list(report["models"]) == ["base", "copy"]
    assert report["comparisons"][0]["raters"]["rates"]["tie"]["rate"] == 1.0  # the same weights under two names
    for models, message in ((["base", "base=llama_course/assets/base"], "named once"), (["base", "=x"], "NAME=MODEL")):
        with pytest.raises(ValueError, match=message):
            evaluate_cli.run(parser.parse_args([*models, "--out", str(tmp_path / "refused")]))
