"""The ablation harness of chapters 2-5: a few-step sweep has the shipped results' schema and repeats bit for bit."""

import dataclasses
import functools
import json

import numpy as np
import pytest

from llama_course.cli import main
from llama_course.config import count_parameters
from llama_course.experiments.ablation import (
    SWEEPS,
    Sweep,
    extension_summary,
    load_results,
    matched_ffn,
    run_sweep,
    summarize,
)


def few_steps(sweep: Sweep) -> Sweep:
    """Two variants (the Llama choice among them), two steps, a little data: the shape of a real sweep."""
    variants = tuple(v for v in sweep.variants if v.name == sweep.baseline) + tuple(
        v for v in sweep.variants if v.name != sweep.baseline)[:1]
    settings = dataclasses.replace(
        sweep.settings, steps=2, warmup_steps=1, documents=120, validation_documents=150, eval_batches=2,
        timing_rounds=1, timing_steps=1, extension_steps=min(sweep.settings.extension_steps, 2),
        decode_context=min(sweep.settings.decode_context, 16), decode_tokens=2, decode_batch=2)
    return dataclasses.replace(sweep, variants=variants, settings=settings)


def merged(a, b):
    """Two schemas of the same field as one: None gives way to a value, dicts join their keys."""
    if a == "NoneType" or a == []:
        return b
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: merged(a[key], b[key]) if key in a and key in b else a.get(key, b.get(key))
                for key in a.keys() | b.keys()}
    return a


def schema(value, names: set[str]):
    """The nested keys and leaf types of a results file, variant names (dict keys) folded into "*"."""
    if isinstance(value, dict):
        folded = {}
        for key, item in value.items():
            key = "*" if key in names else key
            folded[key] = merged(folded[key], schema(item, names)) if key in folded else schema(item, names)
        return folded
    if isinstance(value, list):
        items = [schema(item, names) for item in value]
        return [functools.reduce(merged, items)] if items else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_few_step_sweep_has_the_shipped_schema(name, tmp_path):
    shipped = load_results(name)
    sweep = few_steps(SWEEPS[name])
    results = run_sweep(sweep, [0, 1], tmp_path, progress=False)
    results["seconds"] = 0  # the command adds the sweep's wall time
    names = {variant.name for variant in SWEEPS[name].variants}
    # The sweep's own description differs (fewer variants and steps); its fields are the same.
    assert results.pop("sweep").keys() == (described := shipped.pop("sweep")).keys()
    assert results["seeds"] == [0, 1] and described["settings"]["steps"] == SWEEPS[name].settings.steps
    assert schema(results, names) == schema(shipped, names)
    assert shipped["seeds"] == [0, 1, 2] and set(shipped["runs"]) == names


def test_repeated_sweep_is_bit_identical_and_resumes(tmp_path):
    sweep = few_steps(SWEEPS["positions"])
    first = run_sweep(sweep, [0, 1], tmp_path / "a", progress=False)
    second = run_sweep(sweep, [0, 1], tmp_path / "b", progress=False)
    first.pop("timing"), second.pop("timing")  # the machine's speed, measured anew
    assert json.dumps(first) == json.dumps(second)
    assert first["runs"]["RoPE"][0]["extension"]["interpolated after"] != first["runs"]["RoPE"][1]["extension"][
        "interpolated after"]
    record = tmp_path / "a" / "positions" / "0" / "seed-0" / "record.json"
    stored = record.stat().st_mtime_ns
    resumed = run_sweep(sweep, [0, 1], tmp_path / "a", progress=False)
    resumed.pop("timing")
    assert json.dumps(resumed) == json.dumps(first) and record.stat().st_mtime_ns == stored


def test_summary_pairs_each_seed_and_batch_with_the_baseline():
    sweep = dataclasses.replace(SWEEPS["ffn"], variants=SWEEPS["ffn"].variants[:2])
    runs = {"SwiGLU": [{"val_loss": [2.0, 3.0]}, {"val_loss": [2.5, 3.5]}, {"val_loss": None}],
            "GELU": [{"val_loss": [2.5, 3.5]}, {"val_loss": [3.0, 4.0]}, {"val_loss": [9.0, 9.0]}]}
    summary = summarize(sweep, runs)
    assert summary["SwiGLU"]["diverged"] == 1 and summary["SwiGLU"]["difference"] is None
    assert summary["SwiGLU"]["val_loss"]["mean"] == pytest.approx(2.75)
    gelu = summary["GELU"]
    assert gelu["val_loss"]["mean"] == pytest.approx(np.mean([2.5, 3.5, 3.0, 4.0, 9.0, 9.0]))
    # Every paired difference is +0.5: the interval is that point (the third seed has no baseline).
    assert (gelu["difference"]["mean"], gelu["difference"]["low"], gelu["difference"]["high"]) == pytest.approx(
        (0.5, 0.5, 0.5))


def test_grouped_variants_match_mha_parameters():
    sweep = SWEEPS["attention"]
    mha = count_parameters(sweep.config(sweep.variants[0]))
    for variant in sweep.variants[1:]:
        config = sweep.config(variant)
        assert abs(count_parameters(config) - mha) <= 3 * config.dim * config.n_layers // 2
    with_target = matched_ffn(sweep.config(sweep.variants[2]), mha + 3 * 32 * 2 * 10)
    assert dataclasses.replace(sweep.config(sweep.variants[2]), **with_target).hidden_dim == 114


def test_ablate_command_refuses_bad_input(capsys):
    assert main(["ablate", "ffn", "--steps", "0"]) == 2
    assert "--steps=0 must be a positive number of steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ablate", "dropout"])


def test_extension_summary_averages_the_position_ranges():
    block = 2
    trained = [[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]] * 2  # two batches, positions 0..4T-1
    tuned = {key: [[9.0, 9.0, value, value]] * 2 for key, value in
             (("direct before", 5.0), ("direct after", 4.0), ("interpolated before", 6.0), ("interpolated after", 3.0))}
    record = {"val_loss": [1.0, 1.0], "extension": {"trained": trained, **tuned}}
    results = {"sweep": {"baseline": "RoPE", "settings": {"block_size": block}},
               "runs": {"RoPE": [record, record], "learned": [{"val_loss": [1.0, 1.0]}] * 2}}
    summary = extension_summary(results)
    assert [key for key in summary if "learned" in key] == []
    expected = {"RoPE trained, positions 0-1": 1.0, "RoPE trained, positions 2-3": 2.0,
                "RoPE trained, positions 4-7": 3.0, "RoPE direct before, positions 2-3": 5.0,
                "RoPE interpolated after, positions 2-3": 3.0}
    for key, value in expected.items():
        assert (summary[key]["mean"], summary[key]["low"], summary[key]["high"]) == pytest.approx((value,) * 3)
