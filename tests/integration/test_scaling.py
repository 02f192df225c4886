"""The scaling experiment: its compute accounting, its comparisons, the shipped table, and one real run."""

import json
import math

import pytest

from llama_course.config import count_parameters
from llama_course.experiments.scaling import (
    DEFAULT_BUDGETS,
    SCALING_MODELS,
    SHIPPED_RESULTS,
    ScalingSettings,
    best_loss_per_compute,
    load_results,
    run_experiment,
    run_record,
    smaller_model_wins,
)


def _hand_flops_per_token(config, seq_len: int) -> int:
    """6N + 12 L H hd T written out from the configuration, N without the token embedding."""
    d, hd, hidden = config.dim, config.dim // config.n_heads, config.hidden_dim
    per_layer = 2 * d * config.n_heads * hd + 2 * d * config.n_kv_heads * hd + 3 * d * hidden + 2 * d
    n = config.n_layers * per_layer + d + config.vocab_size * d  # blocks, final norm, output head
    return 6 * n + 12 * config.n_layers * config.n_heads * hd * seq_len


@pytest.mark.parametrize("name", list(SCALING_MODELS))
def test_run_record_counts_training_and_inference_flops(name):
    config = SCALING_MODELS[name]
    record = run_record(name, config, 131_072)
    per_token = _hand_flops_per_token(config, 256)
    assert record["training_flops"] == per_token * 131_072
    assert record["inference_flops_per_token"] * 3 == per_token  # one forward pass of forward + backward
    assert record["parameters"] == count_parameters(config)
    assert record["steps"] == 131_072 // (8 * 256)


def _run(model: str, parameters: int, training_flops: float, val_loss: float) -> dict:
    return {"model": model, "parameters": parameters, "training_flops": training_flops, "val_loss": val_loss}


def test_smaller_model_wins_needs_lower_loss_and_no_more_compute():
    small_long = _run("s", 10, 100.0, 1.0)
    large_short = _run("l", 100, 100.0, 1.5)
    large_long = _run("l", 100, 1000.0, 0.5)
    small_expensive = _run("s", 10, 2000.0, 0.4)
    pairs = smaller_model_wins([small_long, large_short, large_long, small_expensive])
    assert pairs == [(small_long, large_short)]  # small_expensive used more compute than large_long


def test_best_loss_per_compute_keeps_only_improvements_in_compute_order():
    runs = [_run("a", 1, 10.0, 3.0), _run("b", 2, 5.0, 4.0), _run("c", 3, 20.0, 3.5), _run("d", 4, 40.0, 2.0)]
    assert [run["model"] for run in best_loss_per_compute(runs)] == ["b", "a", "d"]


def test_shipped_table_is_the_full_grid_with_consistent_compute():
    table = load_results()
    assert table["settings"] == ScalingSettings().recipe()
    runs = {(run["model"], run["tokens"]): run for run in table["runs"]}
    assert set(runs) == {(name, tokens) for name in SCALING_MODELS for tokens in DEFAULT_BUDGETS}
    for (name, tokens), run in runs.items():
        assert {k: run[k] for k in run_record(name, SCALING_MODELS[name], tokens)} == run_record(
            name, SCALING_MODELS[name], tokens)
        assert math.isfinite(run["val_loss"]) and 0 < run["val_loss"] < math.log(1024) + 0.5
        assert 0.0 <= run["grammar_score"] <= 1.0
    for name in SCALING_MODELS:  # more tokens never hurt a model that has not converged
        losses = [runs[(name, tokens)]["val_loss"] for tokens in sorted(DEFAULT_BUDGETS)]
        assert losses == sorted(losses, reverse=True), name
    assert smaller_model_wins(table["runs"]), "the shipped table shows no smaller-model-trained-longer win"


def test_run_experiment_trains_records_and_skips_finished_runs(tmp_path):
    settings = ScalingSettings(eval_batches=1, grammar_samples=1, device="cpu")
    output = tmp_path / "results.json"
    table = run_experiment(output, ["d32"], [20_480], settings, tmp_path / "work")
    (record,) = table["runs"]
    assert record["model"] == "d32" and record["tokens"] == 20_480 and record["steps"] == 10
    assert math.isfinite(record["val_loss"]) and record["val_loss"] < math.log(1024)  # it learnt something
    assert json.loads(output.read_text()) == table
    again = run_experiment(output, ["d32"], [20_480], settings, tmp_path / "work")
    assert again["runs"] == table["runs"]  # nothing retrained
    with pytest.raises(ValueError, match="made with settings"):
        run_experiment(output, ["d32"], [20_480], ScalingSettings(lr=1e-3, device="cpu"), tmp_path / "work")


def test_bad_grid_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown scaling models.*d999"):
        run_experiment(tmp_path / "r.json", ["d999"], [20_480])
    with pytest.raises(ValueError, match="under 10 steps"):
        run_experiment(tmp_path / "r.json", ["d32"], [4_096])


def test_missing_results_file_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="llama-course scaling"):
        load_results(tmp_path / "none.json")
    assert SHIPPED_RESULTS.is_file()
