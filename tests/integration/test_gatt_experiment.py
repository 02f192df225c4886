"""Chapter 14's Ghost Attention experiment end to end: a tiny run of every model, and its resume."""

from llama_course.toyworld import generate_dialogues


def test_experiment_runs_small_and_resumes_from_its_measurements(tmp_path, monkeypatch):
    from llama_course.experiments import gatt as experiment

    config = experiment.GAttConfig(base="random-tiny", dialogues=2, train_turns=(2, 3), answers="reference",
                                   sft_mix=4, eval_dialogues=2, eval_turns=3, recall_turns=(2, 3), eval_tasks=3,
                                   attention_dialogues=1, max_new_tokens=4, batch_size=4)
    results, _, _ = experiment.run_experiment(config, [0], tmp_path, log=lambda _: None)
    assert results["config"] == config.to_dict()
    for name in ("base", "gatt", "control"):
        assert len(results[name]["recall_by_turn"]) == 3
    assert len(results["gatt"]["adherence_by_seed"][0]) == 2 and len(results["gatt"]["helpfulness_by_seed"][0]) == 3
    assert (tmp_path / "seed-0" / "gatt" / "model" / "model.safetensors").is_file()
    # GAtt learns every prefix (k >= 1); the control the first turns, repeated to as many samples, as many steps
    training = {name: results[name]["training_by_seed"][0] for name in ("gatt", "control")}
    assert training["gatt"]["samples"] == training["control"]["samples"] == sum(
        generate_dialogues(2, seed=0, n_turns=(2, 3))["n_turns"])
    assert training["gatt"]["steps"] == training["control"]["steps"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished measurement was recomputed")

    monkeypatch.setattr(experiment, "finetune_gatt", no_training)
    again, _, _ = experiment.run_experiment(config, [0], tmp_path, log=lambda _: None)
    assert again == results
