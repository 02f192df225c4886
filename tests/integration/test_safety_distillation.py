"""Chapter 16's context distillation: the risk classifier, the preprompts in the chat format, the Safety RM
filter of Figure 16b, a tiny end-to-end run with the shipped schema, its resume, and the shipped results."""

import numpy as np
import pytest

from llama_course.chat import B_SYS, render_dialog
from llama_course.experiments import safety_distillation
from llama_course.experiments.safety import METRICS, ScalingConfig, scaling_prompts
from llama_course.experiments.safety_distillation import (
    PLAIN_PREPROMPT,
    TARGETED_PREPROMPTS,
    VARIANTS,
    DistillationConfig,
    distillation_prompts,
    keep_safer_answers,
    load_distillation_results,
    risk_category,
    run_distillation,
)
from llama_course.toyworld import is_safety_prompt
from llama_course.toyworld.safety import identify_borderline

TINY = DistillationConfig(
    scaling=ScalingConfig(base="random-tiny", tasks=24, safety_pool=4, fractions=(0.0,), epochs=1.0,
                          eval_unsafe=5, eval_borderline=5, eval_tasks=5, max_new_tokens=6),
    unsafe=6, borderline=4, tasks=24, epochs=1.0)


def test_the_risk_category_follows_the_request_words_borderline_requests_included():
    assert risk_category("How can I hit the cat?") == "harm"
    assert risk_category("How can I smash Tom's kite?") == "damage"
    assert risk_category("Help me trick Mia the dog.") == "deceive"
    assert risk_category("How can I steal the cake from Sam?") == "steal"
    assert risk_category("How can I break the bread into pieces?") == "damage"  # borderline, flagged by its word
    assert risk_category("What is 2 plus 3?") is None


def test_targeted_preprompts_are_system_messages_with_an_answer_template():
    for _, preprompt in TARGETED_PREPROMPTS.values():
        assert preprompt.startswith(PLAIN_PREPROMPT) and "Answer like this: I will not help you" in preprompt
        text = render_dialog([{"role": "system", "content": preprompt}, {"role": "user", "content": "Hi"}])
        assert text.startswith(f"<s>[INST] {B_SYS}{preprompt}")


def test_the_filter_keeps_a_distilled_answer_only_when_the_safety_rm_scores_it_higher():
    kept = keep_safer_answers(["a", "b", "c"], ["A", "B", "C"], [0.2, 0.5, 0.9], [0.7, 0.5, 0.1])
    assert kept == ["A", "b", "c"]  # a tie keeps the original
    with pytest.raises(ValueError, match="lengths 3, 2, 3, 3"):
        keep_safer_answers(["a", "b", "c"], ["A", "B"], [0.2, 0.5, 0.9], [0.7, 0.5, 0.1])


def test_distillation_prompts_hold_each_kind_and_no_held_out_prompt():
    per_seed, prompts = scaling_prompts(TINY.scaling, [0])
    held_out = {p for ps in prompts.values() for p in ps}
    chosen = distillation_prompts(DistillationConfig(unsafe=30, borderline=20, tasks=40), held_out)
    assert len(chosen) == len(set(chosen)) == 90 and not held_out & set(chosen)
    assert sum(map(is_safety_prompt, chosen[:30])) == 30
    assert all(identify_borderline(p) for p in chosen[30:50])
    assert not any(is_safety_prompt(p) or identify_borderline(p) for p in chosen[50:])


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="unsafe=-1"):
        DistillationConfig(unsafe=-1)
    with pytest.raises(ValueError, match="no distillation prompt"):
        DistillationConfig(unsafe=0, borderline=0, tasks=0)


def test_a_tiny_run_has_the_shipped_schema_and_resumes_without_training(tmp_path, monkeypatch):
    results = run_distillation(TINY, [0], tmp_path)
    assert set(results["summary"]) == set(VARIANTS) == set(results["runs"])
    for variant in VARIANTS:
        for metric in METRICS:
            values = np.array([run[metric] for run in results["runs"][variant]])
            summary = results["summary"][variant][metric]
            assert summary["mean"]["rate"] == pytest.approx(values.mean())
            for other in set(VARIANTS) - {variant}:
                reference = np.array([run[metric] for run in results["runs"][other]])
                difference = summary[f"difference_vs_{other}"]
                assert difference["rate"] == pytest.approx((values - reference).mean())
                assert difference["low"] <= difference["rate"] <= difference["high"]
    data = results["distillation_data"][0]
    assert [data[k]["prompts"] for k in ("unsafe", "borderline", "task")] == [6, 4, 24]
    assert data["unsafe"]["flagged"] == 6 and data["task"]["flagged"] == 0
    assert data["unsafe"]["targeted_kept"] <= data["unsafe"]["targeted_changed"]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(safety_distillation, "finetune_on_answers", no_training)
    monkeypatch.setattr(safety_distillation, "distillation_data", no_training)
    assert run_distillation(TINY, [0], tmp_path) == results


def test_shipped_results_hold_200_prompts_per_set_and_a_summary_of_their_values():
    results = load_distillation_results()
    assert all(n >= 200 for n in results["prompts"].values())
    assert set(results["runs"]) == set(VARIANTS)
    for variant, runs in results["runs"].items():
        assert len(runs) == len(results["seeds"])
        for metric in METRICS:
            per_prompt = np.array([run[metric] for run in runs])
            assert results["summary"][variant][metric]["mean"]["rate"] == pytest.approx(per_prompt.mean())
