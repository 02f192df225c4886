"""The evaluation report and `llama-course evaluate`: answers of known quality give the known verdicts."""

import argparse
import json
import random

import pytest

from llama_course.commands import evaluate
from llama_course.evaluation.answers import reward_model_scorer
from llama_course.evaluation.report import EvaluationPrompts, ModelAnswers, evaluate_answers
from llama_course.experiments.toyworld_judges import ToyEvaluationJudges
from llama_course.toyworld import generate_tasks
from llama_course.toyworld.annotators import STRENGTH_THRESHOLDS
from llama_course.toyworld.safety import sample_safety_prompt


@pytest.fixture(scope="module")
def known_answers():
    tasks = generate_tasks(60, seed=15)
    rng = random.Random(15)
    requests = [sample_safety_prompt(rng) for _ in range(30)]
    prompts = EvaluationPrompts(list(tasks["prompt"]), [request.prompt for request in requests])
    answers = {
        # reference answers: fully helpful, and safe (refusal with an alternative, or the borderline answer)
        "reference": ModelAnswers(list(tasks["answer"]), [request.answer for request in requests]),
        # never helpful, but harmless: "I do not know." to everything
        "unhelpful": ModelAnswers(["I do not know."] * 60, ["I do not know."] * 30),
        # complies with every unsafe request and twists every borderline one into harm
        "harmful": ModelAnswers(list(tasks["answer"]), [request.bad_answer for request in requests]),
    }
    return prompts, answers, requests


def test_report_ranks_models_of_known_quality(known_answers):
    prompts, answers, requests = known_answers
    report = evaluate_answers(prompts, answers, ToyEvaluationJudges(), resamples=300, seed=0)
    assert [(c["model_a"], c["model_b"]) for c in report["comparisons"]] == [
        ("reference", "unhelpful"), ("reference", "harmful"), ("unhelpful", "harmful")]
    versus_unhelpful, versus_harmful, _ = report["comparisons"]
    # the reference answer is "significantly better" than "I do not know." on every task (true gap 1.0), so
    # the true judge gives all wins and the three noisy raters (2% flips each) nearly all
    assert versus_unhelpful["true_judge"]["rates"]["win"]["rate"] == 1.0
    assert versus_unhelpful["raters"]["rates"]["win"]["rate"] >= 0.95
    assert versus_unhelpful["raters_match_true_judge"] >= 0.95
    # identical task answers: every rating is "about the same", a tie, and kappa is undefined
    assert versus_harmful["raters"]["rates"]["tie"]["rate"] == 1.0
    assert versus_harmful["agreement"] == {"gwet_ac2": 1.0, "fleiss_kappa": None}
    assert versus_harmful["position_bias"]["consistency"] == 1.0
    models = report["models"]
    assert models["reference"]["helpfulness"] == 1.0 and models["unhelpful"]["helpfulness"] == 0.0
    # every harmful answer is a 1 and noise only moves a 1 to a 2: all violate; the safe answers are 5s and 4s
    assert models["harmful"]["violation_rate"]["rate"] == 1.0
    assert models["reference"]["violation_rate"] == {"rate": 0.0, "low": 0.0, "high": 0.0}
    json.dumps(report)  # the report is plain JSON


@pytest.mark.parametrize("gap_scale", [1.0, 0.5])
def test_reward_model_judge_plugs_into_the_report(known_answers, gap_scale):
    prompts, answers, _ = known_answers
    two = {name: answers[name] for name in ("unhelpful", "reference")}

    def length_scorer(prompt, response):  # a poor reward model: longer is better
        return min(len(response) / 100, 1.0)

    report = evaluate_answers(prompts, two, ToyEvaluationJudges(), reward_scorer=length_scorer,
                              reward_gap_scale=gap_scale, resamples=300)
    judged = report["comparisons"][0]["reward_model"]
    truth = report["comparisons"][0]["true_judge"]["rates"]
    assert truth["loss"]["rate"] == 1.0  # "unhelpful" is model A and loses everywhere
    # the judge sees a loss for A only where the score gap reaches the "slightly better" threshold, else a tie
    unhelpful = length_scorer("", "I do not know.")
    expected_losses = sum((length_scorer("", a) - unhelpful) / gap_scale >= STRENGTH_THRESHOLDS[-1]
                          for a in answers["reference"].helpfulness) / 60
    assert 0 < expected_losses < 1
    assert judged["matches_true_judge"] == pytest.approx(expected_losses)
    assert judged["position_bias"]["mean_shift"] == 0.0


def test_report_rejects_bad_input(known_answers):
    prompts, answers, _ = known_answers
    with pytest.raises(ValueError, match="at least 2 models"):
        evaluate_answers(prompts, {"reference": answers["reference"]}, ToyEvaluationJudges())
    short = ModelAnswers(["x"], ["y"])
    with pytest.raises(ValueError, match="model 'short' answered 1/1 prompts"):
        evaluate_answers(prompts, {"reference": answers["reference"], "short": short}, ToyEvaluationJudges())


def _parse(*argv):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_evaluate_command_writes_report_and_plots(tmp_path):
    # the shipped base model against the same weights loaded from its folder: every judgment must be a tie
    args = _parse("base", "llama_course/assets/base", "--out", str(tmp_path), "--prompts", "4",
                  "--safety-prompts", "3", "--max-new-tokens", "6", "--resamples", "200")
    evaluate.run(args)
    report = json.loads((tmp_path / evaluate.REPORT_FILE).read_text())
    assert set(report["models"]) == {"base", "llama_course/assets/base"}
    assert report["comparisons"][0]["raters"]["rates"]["tie"]["rate"] == 1.0
    assert report["settings"]["prompt_seed"] == 15
    for plot in ("win_tie_loss.png", "helpfulness_vs_safety.png"):
        assert (tmp_path / plot).stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("base",), "at least two models"),
        (("base", "base"), "named once"),
        (("base", "nonexistent"), "no shipped model named 'nonexistent'"),
        (("base", "llama_course/assets/base", "--prompts", "0"), "--prompts=0"),
        (("base", "llama_course/assets/base", "--raters", "2"), "--raters=2: use an odd number"),
        (("base", "llama_course/assets/base", "--reward-model", "nowhere"), "no reward model at 'nowhere'"),
        (("base", "llama_course/assets/base", "--noise-scale", "3"), "noise_scale=3"),
    ],
)
def test_evaluate_command_rejects_bad_arguments(argv, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluate.run(_parse("--out", str(tmp_path), *argv))
    assert not (tmp_path / evaluate.REPORT_FILE).exists()


def test_reward_model_scorer_scores_each_answer_once_after_a_sigmoid(tmp_path, known_answers):
    import torch

    from llama_course.alignment.reward import RewardModel, score_responses
    from llama_course.alignment.reward_train import load_reward_model, save_reward_model
    from llama_course.config import PRESETS
    from llama_course.model import Llama
    from llama_course.toyworld import toy_tokenizer

    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    model = RewardModel(Llama(PRESETS["tiny"]), tokenizer.eos_id).eval()
    save_reward_model(model, tmp_path, card={})
    loaded, tokenizer = load_reward_model(str(tmp_path))
    prompts, answers, _ = known_answers
    few = EvaluationPrompts(prompts.helpfulness[:5], [])
    given = {"empty": ModelAnswers([""] * 5, []), "reference": ModelAnswers(answers["reference"].helpfulness[:5], [])}
    scorer = reward_model_scorer(loaded, tokenizer, few, given)
    expected = torch.sigmoid(score_responses(model, tokenizer, few.helpfulness, given["reference"].helpfulness))
    for prompt, answer, score in zip(few.helpfulness, given["reference"].helpfulness, expected.tolist(), strict=True):
        assert scorer(prompt, answer) == pytest.approx(score, abs=1e-6)
        assert scorer(prompt, "") == 0.0
