"""Chapters 2 to 5's measurement: does each Llama choice help? Architecture ablations with intervals over seeds.

A sweep trains variants of one small model, each a `ModelConfig` of the real `Llama` (its architecture fields
or its head grouping), on the same toy stories in the same order, for several seeds. A seed fixes the
initialisation and the data order, the same for every variant. Each run records the loss of every fixed
validation batch, so that `summarize` can give each variant's validation loss and its paired difference from
the Llama choice (same seed, same batch) with `evaluation.bootstrap_mean`'s two-level 95% interval over seeds
and batches. Step time is measured apart, in interleaved rounds on fresh models (every variant steps in turn,
median of rounds), since a shared machine's load drifts over a sweep; so is chapter 5's decoding.

The sweeps (`SWEEPS`), sized for a 2-core CPU (`ABLATION_MODEL`, far below the `tiny` preset):
- `norms` (chapter 2): pre-norm RMSNorm (Llama) against post-norm with and without warm-up, against LayerNorm,
  and both placements at learning rates 3x and 10x the sweep's, looking for one where post-norm fails;
- `ffn` (chapter 3): SwiGLU (Llama) against GELU and ReLU FFNs with as many weights;
- `positions` (chapter 4): RoPE (Llama) against learned absolute positions and none, trained at context T;
  then `extension`: each RoPE and no-position model's loss per position up to 4T, and Llama 2's longer
  context by position interpolation (Chen et al., 2023): a short fine-tune at 2T with positions divided by 2,
  against the same fine-tune without interpolation;
- `attention` (chapter 5): MHA against GQA (Llama 2 70B's choice) and MQA, the FFN widened to match MHA's
  parameter count as Llama 2 did (Table 18), and the measured decode tokens/s and KV-cache bytes at a long
  context.

Every (variant, seed) run is kept under `work_dir` as it finishes, so an interrupted sweep resumes where it
stopped. The losses are bit-identical from one run of a sweep to the next on the same machine; the
`timing` section is a measurement of the machine and is not.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llama_course.config import ModelConfig, count_parameters
from llama_course.evaluation import bootstrap_mean
from llama_course.experiments import cached_json, load_results_file
from llama_course.interop.configs import ffn_rule_for_hidden_dim
from llama_course.layers.cross_entropy import IGNORE_INDEX
from llama_course.measurements.profiling import interleaved_seconds
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.training.batches import evaluation_batches
from llama_course.training.optim import AdamWConfig, build_optimizer
from llama_course.training.trainer import NonFiniteLossError, Trainer, TrainerConfig, causal_lm_loss

RESULTS_DIR = ASSETS_DIR / "ablations"
# Below the `tiny` preset (dim 128, 4 layers): 2 layers of width 32, about 91k parameters, so that a sweep of
# 3 seeds runs in minutes on a loaded 2-core CPU.
ABLATION_MODEL = ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=1024, multiple_of=8, max_seq_len=64)


@dataclass(frozen=True)
class Variant:
    """One arm of a sweep: ModelConfig fields over the sweep's model, and optionally its own lr / warm-up."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    warmup_steps: int | None = None


@dataclass(frozen=True)
class SweepSettings:
    """What every run of a sweep shares."""

    steps: int = 80
    micro_batch_size: int = 8
    block_size: int = 64
    lr: float = 3e-2  # about the best for this model and budget (5e-3 left it far from trained)
    warmup_steps: int = 8
    documents: int = 1_500  # training stories (about 65 tokens each): no block repeats within a run
    validation_documents: int = 400
    eval_batches: int = 8  # fixed validation batches of micro_batch_size blocks: the "prompts" of the interval
    document_masking: bool = True  # attention and positions restart at each story (the pretraining recipe)
    timing_rounds: int = 5  # interleaved rounds of `timing_steps` training steps per variant
    timing_steps: int = 2
    extension_steps: int = 0  # > 0: chapter 4's context extension, fine-tuning steps at 2 x block_size
    extension_lr: float = 3e-3
    decode_context: int = 0  # > 0: chapter 5's decode speed and KV bytes with this many cached tokens
    decode_tokens: int = 16
    decode_batch: int = 16  # sequences decoded together: enough cache to read that it shows


@dataclass(frozen=True)
class Sweep:
    name: str
    chapter: int
    baseline: str  # the Llama choice, the variant every other one is compared with
    variants: tuple[Variant, ...]
    settings: SweepSettings = SweepSettings()
    model: ModelConfig = ABLATION_MODEL

    def config(self, variant: Variant) -> ModelConfig:
        """The variant's model, its context at least the block size (the learned table exactly that)."""
        return dataclasses.replace(self.model, max_seq_len=self.settings.block_size, **variant.model)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "chapter": self.chapter, "baseline": self.baseline,
                "model": self.model.to_dict(), "settings": dataclasses.asdict(self.settings),
                "variants": [dataclasses.asdict(variant) for variant in self.variants]}


def matched_ffn(config: ModelConfig, parameters: int) -> dict[str, Any]:
    """The FFN rule (multiple_of, ffn_dim_multiplier) whose width brings `config` closest to `parameters`.

    Llama 2 (Table 18) compares MHA, GQA and MQA at equal size by widening the FFN of the models whose K and V
    projections shrank; the width is within one step of 3 * dim parameters per layer of the target.
    """
    per_width = 3 * config.dim * config.n_layers  # parameters per unit of SwiGLU width
    missing = parameters - count_parameters(config)
    width = config.hidden_dim + round(missing / per_width)
    multiple_of, multiplier = ffn_rule_for_hidden_dim(config.dim, width)
    return {"multiple_of": multiple_of, "ffn_dim_multiplier": multiplier}


def _attention_variants() -> tuple[Variant, ...]:
    mha = dataclasses.replace(ABLATION_MODEL, n_kv_heads=4)
    target = count_parameters(mha)
    variants = [Variant("MHA (4 KV heads)", {"n_kv_heads": 4})]
    for label, kv_heads in (("GQA (2 KV heads)", 2), ("MQA (1 KV head)", 1)):
        grouped = dataclasses.replace(ABLATION_MODEL, n_kv_heads=kv_heads)
        variants.append(Variant(label, {"n_kv_heads": kv_heads, **matched_ffn(grouped, target)}))
    return tuple(variants)


SWEEPS: dict[str, Sweep] = {
    "norms": Sweep("norms", 2, "pre-norm RMSNorm", (
        Variant("pre-norm RMSNorm"),
        Variant("pre-norm LayerNorm", {"norm_type": "layernorm"}),
        Variant("post-norm RMSNorm", {"norm_placement": "post"}),
        Variant("post-norm RMSNorm, no warm-up", {"norm_placement": "post"}, warmup_steps=0),
        Variant("pre-norm RMSNorm, lr 0.1", lr=0.1),
        Variant("post-norm RMSNorm, lr 0.1", {"norm_placement": "post"}, lr=0.1),
        Variant("pre-norm RMSNorm, lr 0.3", lr=0.3),
        Variant("post-norm RMSNorm, lr 0.3", {"norm_placement": "post"}, lr=0.3),
    )),
    "ffn": Sweep("ffn", 3, "SwiGLU", (
        Variant("SwiGLU"),
        Variant("GELU", {"ffn_activation": "gelu"}),
        Variant("ReLU", {"ffn_activation": "relu"}),
    )),
    "positions": Sweep("positions", 4, "RoPE", (
        Variant("RoPE"),
        Variant("learned", {"position_encoding": "learned"}),
        Variant("none", {"position_encoding": "none"}),
    ), SweepSettings(block_size=32, micro_batch_size=16, document_masking=False, extension_steps=30)),
    "attention": Sweep("attention", 5, "GQA (2 KV heads)", _attention_variants(),
                       SweepSettings(decode_context=512)),
}


# ----- one run ------------------------------------------------------------------------------------------------
def _data(settings: SweepSettings, block_size: int) -> tuple[Any, Any]:
    from llama_course.experiments.toyworld_data import pretraining_data
    from llama_course.training.pretrain import DataConfig

    _, train, validation = pretraining_data(DataConfig(
        documents=settings.documents, validation_documents=settings.validation_documents, block_size=block_size,
        document_masking=settings.document_masking))
    return train, validation


def _columns(settings: SweepSettings) -> list[str]:
    return ["input_ids", "labels"] + (["document_ids"] if settings.document_masking else [])


@torch.no_grad()
def position_losses(model: Llama, batches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """(batches, T) mean next-token loss of every batch at every position (targets marked ignored count 0)."""
    model.eval()
    rows = []
    for batch in batches:
        logits = model(batch["input_ids"], document_ids=batch.get("document_ids")).logits
        loss = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX, reduction="none")
        rows.append(loss.mean(0).double().numpy())
    return np.stack(rows)


def _batch_losses(model: Llama, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """The mean loss of every fixed validation batch (kept targets only)."""
    model.eval()
    with torch.no_grad():
        return [causal_lm_loss(model, batch).total.item() / int((batch["labels"] != IGNORE_INDEX).sum())
                for batch in batches]


def _train(model: Llama, train: Any, settings: SweepSettings, output_dir: Path, *, seed: int, steps: int,
           lr: float, warmup_steps: int) -> bool:
    """Train `model` in place with the pretraining loop; False when the loss became NaN or infinite."""
    config = TrainerConfig(steps=steps, micro_batch_size=settings.micro_batch_size, lr=lr,
                           warmup_steps=warmup_steps, eval_every=0, eval_batches=0, checkpoint_every=0,
                           keep_checkpoints=1, log_every=max(1, steps // 20), seed=seed, device="cpu",
                           autocast="off", progress=False, resume=False)
    trainer = Trainer(model, train, config, output_dir, columns=_columns(settings),
                      metadata={"model_config": model.config.to_dict()})
    try:
        trainer.fit()
    except NonFiniteLossError:
        return False
    return True


def run_one(sweep: Sweep, variant: Variant, seed: int, data: dict[int, tuple[Any, Any]], output_dir: Path
            ) -> dict[str, Any]:
    """Train one variant for one seed and measure it (see the module docstring); returns its JSON record."""
    settings = sweep.settings
    config = sweep.config(variant)
    train, validation = data[settings.block_size]
    batches = evaluation_batches(validation, settings.micro_batch_size, settings.eval_batches,
                                 columns=_columns(settings))
    torch.manual_seed(seed)
    model = Llama(config)
    finished = _train(model, train, settings, output_dir / "train", seed=seed, steps=settings.steps,
                      lr=variant.lr or settings.lr,
                      warmup_steps=settings.warmup_steps if variant.warmup_steps is None else variant.warmup_steps)
    record: dict[str, Any] = {"diverged": not finished, "val_loss": None}
    if not finished:
        return record
    record["val_loss"] = _batch_losses(model, batches)
    if settings.extension_steps and config.position_encoding != "learned":
        record["extension"] = _extend(model, settings, data, output_dir, seed)
    return record


def _extend(model: Llama, settings: SweepSettings, data: dict[int, tuple[Any, Any]], output_dir: Path, seed: int
            ) -> dict[str, Any]:
    """Chapter 4: loss per position up to 4T of the model trained at T, then fine-tunes at 2T with and without
    position interpolation, each measured up to 2T (mean over the validation batches, as lists)."""
    block = settings.block_size
    long_batches = {n: evaluation_batches(data[n * block][1], settings.micro_batch_size, settings.eval_batches,
                                          columns=_columns(settings)) for n in (2, 4)}
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def stretched(**fields: Any) -> Llama:
        longer = Llama(dataclasses.replace(model.config, **fields))
        longer.load_state_dict(weights)
        return longer

    result = {"trained": position_losses(stretched(max_seq_len=4 * block), long_batches[4]).tolist()}
    if model.config.position_encoding != "rope":
        return result
    for name, scale in (("interpolated", 2.0), ("direct", 1.0)):
        longer = stretched(max_seq_len=2 * block, position_interpolation=scale)
        result[f"{name} before"] = position_losses(longer, long_batches[2]).tolist()
        _train(longer, data[2 * block][0], settings, output_dir / name, seed=seed,
               steps=settings.extension_steps, lr=settings.extension_lr, warmup_steps=0)
        result[f"{name} after"] = position_losses(longer, long_batches[2]).tolist()
    return result


# ----- machine measurements -------------------------------------------------------------------------------------
def time_steps(sweep: Sweep, data: dict[int, tuple[Any, Any]]) -> dict[str, float]:
    """Median seconds per training step of each variant: fresh models, interleaved rounds (module docstring)."""
    settings = sweep.settings
    train = data[settings.block_size][0]
    batch = evaluation_batches(train, settings.micro_batch_size, 1, columns=_columns(settings))[0]

    def steps_of(variant: Variant) -> Any:
        torch.manual_seed(0)
        model = Llama(sweep.config(variant)).train()
        optimizer = build_optimizer(model, AdamWConfig(lr=settings.lr))

        def step() -> None:
            for _ in range(settings.timing_steps):
                causal_lm_loss(model, batch).total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return step

    seconds = interleaved_seconds({variant.name: steps_of(variant) for variant in sweep.variants},
                                  rounds=settings.timing_rounds)
    return {name: statistics.median(values) / settings.timing_steps for name, values in seconds.items()}


@torch.no_grad()
def measure_decoding(sweep: Sweep) -> dict[str, dict[str, float]]:
    """Chapter 5: greedy decode tokens/s of `decode_batch` sequences after `decode_context` cached tokens each
    (fresh models, interleaved rounds, median) and the KV cache's bytes at that context, per variant."""
    settings = sweep.settings
    context = settings.decode_context
    prompt = torch.randint(0, sweep.model.vocab_size, (settings.decode_batch, context),
                           generator=torch.Generator().manual_seed(0))
    steps, kv_bytes = {}, {}

    def decoder(variant: Variant) -> Any:
        torch.manual_seed(0)
        config = dataclasses.replace(sweep.config(variant), max_seq_len=context + settings.decode_tokens)
        model = Llama(config).eval()
        cache = model.new_cache(settings.decode_batch)
        first = model(prompt, cache=cache).logits[:, -1:].argmax(-1)
        kv_bytes[variant.name] = sum(t[:, :, :context].nbytes for t in cache.keys + cache.values)

        def decode() -> None:
            cache.length = context  # the prompt's keys and values stay; the new tokens overwrite the last run's
            token = first
            for _ in range(settings.decode_tokens):
                token = model(token, cache=cache).logits[:, -1:].argmax(-1)

        return decode

    for variant in sweep.variants:
        steps[variant.name] = decoder(variant)
    seconds = interleaved_seconds(steps, rounds=settings.timing_rounds)
    tokens = settings.decode_batch * settings.decode_tokens
    return {name: {"tokens_per_second": tokens / statistics.median(values), "kv_cache_bytes": kv_bytes[name]}
            for name, values in seconds.items()}


# ----- the sweep ------------------------------------------------------------------------------------------------
def _interval(values: np.ndarray) -> dict[str, float]:
    interval = bootstrap_mean(values)
    return {"mean": interval.rate, "low": interval.low, "high": interval.high}


def summarize(sweep: Sweep, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: validation loss and its difference from the baseline (same seed and batch), each with a 95%
    interval over seeds and batches (seeds where either diverged left out); None when no seed finished."""
    baseline = runs[sweep.baseline]
    summary = {}
    for name, records in runs.items():
        kept = [i for i, record in enumerate(records) if record["val_loss"] is not None]
        paired = [i for i in kept if baseline[i]["val_loss"] is not None]
        loss = np.array([records[i]["val_loss"] for i in kept])
        difference = np.array([np.subtract(records[i]["val_loss"], baseline[i]["val_loss"]) for i in paired])
        summary[name] = {
            "diverged": len(records) - len(kept),
            "val_loss": _interval(loss) if kept else None,
            "difference": _interval(difference) if paired and name != sweep.baseline else None,
        }
    return summary


def run_sweep(sweep: Sweep, seeds: list[int], work_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Every (variant, seed) run of `sweep` (resumed from `work_dir`), the summary, and the machine timings."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} must be distinct and at least one")
    settings = sweep.settings
    lengths = [settings.block_size] + ([2 * settings.block_size, 4 * settings.block_size]
                                       if settings.extension_steps else [])
    data = {n: _data(settings, n) for n in lengths}
    folder = Path(work_dir) / sweep.name
    runs: dict[str, list[dict[str, Any]]] = {variant.name: [] for variant in sweep.variants}
    jobs = [(seed, variant) for seed in seeds for variant in sweep.variants]
    for seed, variant in tqdm(jobs, desc=f"ablation {sweep.name}", unit="run", disable=not progress):
        key = {"sweep": sweep.to_dict(), "variant": variant.name, "seed": seed}
        run_dir = folder / f"{sweep.variants.index(variant)}" / f"seed-{seed}"
        runs[variant.name].append(cached_json(run_dir / "record.json", key,
                                          functools.partial(run_one, sweep, variant, seed, data, run_dir)))
    results: dict[str, Any] = {
        "sweep": sweep.to_dict(), "seeds": seeds,
        "parameters": {variant.name: count_parameters(sweep.config(variant)) for variant in sweep.variants},
        "runs": runs, "summary": summarize(sweep, runs),
        "timing": {"step_seconds": time_steps(sweep, data)},
    }
    if settings.decode_context:
        results["timing"]["decoding"] = measure_decoding(sweep)
    return results


def load_results(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """A sweep's results file (by default the shipped one, `assets/ablations/NAME.json`)."""
    return load_results_file(RESULTS_DIR / f"{name}.json" if path is None else path, f"llama-course ablate {name}")


# ----- reading the results --------------------------------------------------------------------------------------
def verdicts(results: dict[str, Any]) -> dict[str, str]:
    """Each alternative against the Llama choice: "lower loss", "higher loss" (its interval excludes zero),
    "within noise", or "diverged" (no seed finished)."""
    baseline = results["sweep"]["baseline"]
    out = {}
    for name, summary in results["summary"].items():
        if name == baseline:
            continue
        difference = summary["difference"]
        if difference is None:
            out[name] = "diverged"
        elif difference["high"] < 0:
            out[name] = "lower loss"
        elif difference["low"] > 0:
            out[name] = "higher loss"
        else:
            out[name] = "within noise"
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A table as wide as the book's column (76 characters): per variant, the validation loss (mean over seeds),
    its difference from the Llama choice with the 95% interval, and the verdict (step times: `plot_ablation`)."""
    baseline, judged = results["sweep"]["baseline"], verdicts(results)
    width = max(len("variant"), *(len(name) for name in results["summary"]))
    lines = [f"{'variant':{width}s} {'loss':>5s}  vs {baseline}, 95% interval"]
    for name, summary in results["summary"].items():
        loss, gap = summary["val_loss"], summary["difference"]
        row = f"{name:{width}s} " + (f"{loss['mean']:.3f}" if loss else "    -")
        if gap is not None and name in judged:
            row += f"  {gap['mean']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"
        lines.append(f"{row}  {judged.get(name, '')}".rstrip())
    return lines


def plot_ablation(results: dict[str, Any]):
    """Left: each variant's validation loss minus the Llama choice's (95% interval); right: ms per step."""
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    fig, (loss_ax, time_ax) = plt.subplots(1, 2, figsize=(8, 0.45 * len(names) + 1.4), sharey=True,
                                           gridspec_kw={"width_ratios": [2, 1]})
    for row, name in enumerate(names):
        summary = results["summary"][name]
        difference = summary["difference"]
        if name == results["sweep"]["baseline"]:
            loss_ax.plot(0, row, "D", color="C1")
        elif difference is None:
            loss_ax.annotate(f"diverged ({summary['diverged']} of {len(results['seeds'])} seeds)", (0, row),
                             va="center", color="C3")
        else:
            loss_ax.errorbar(difference["mean"], row, xerr=[[difference["mean"] - difference["low"]],
                                                            [difference["high"] - difference["mean"]]],
                             fmt="o", color="C0", capsize=3)
    loss_ax.axvline(0, color="gray", lw=0.8)
    loss_ax.set_yticks(range(len(names)), names)
    loss_ax.invert_yaxis()
    loss_ax.set_xlabel(f"validation loss minus {results['sweep']['baseline']}'s")
    steps = results["timing"]["step_seconds"]
    time_ax.barh(range(len(names)), [1e3 * steps[name] for name in names], color="C2")
    time_ax.set_xlabel("ms per training step")
    fig.suptitle(f"{len(results['seeds'])} seeds, {results['sweep']['settings']['steps']} steps "
                 f"(the sweep: {results['seconds'] / 60:.0f} min on a shared 2-core CPU); "
                 "95% intervals over seeds and validation batches", fontsize=9)
    fig.tight_layout()
    return fig


def plot_extension(results: dict[str, Any]):
    """Chapter 4: loss by position (mean over seeds and batches) of models trained at context T, beyond T, and
    after the fine-tunes at 2T with and without position interpolation."""
    import matplotlib.pyplot as plt

    block = results["sweep"]["settings"]["block_size"]
    fig, (trained_ax, tuned_ax) = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for name, records in results["runs"].items():
        curves = [record["extension"]["trained"] for record in records if "extension" in record]
        if curves:
            trained_ax.plot(np.mean(curves, axis=(0, 1)), label=name)
    rope = [record["extension"] for record in results["runs"][results["sweep"]["baseline"]] if "extension" in record]
    for key, style in (("direct before", "C3:"), ("direct after", "C3-"), ("interpolated before", "C0:"),
                       ("interpolated after", "C0-")):
        tuned_ax.plot(np.mean([extension[key] for extension in rope], axis=(0, 1)), style, label=key)
    for ax, title in ((trained_ax, f"trained at T = {block}"), (tuned_ax, f"RoPE fine-tuned at 2T = {2 * block}")):
        ax.axvline(block - 0.5, color="gray", lw=0.8)
        ax.set_xlabel("position")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    trained_ax.set_ylabel("validation loss")
    fig.tight_layout()
    return fig


def extension_summary(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Chapter 4's mean losses with 95% intervals over seeds and validation batches: each trained model's at
    positions [0, T), [T, 2T) and [2T, 4T), and RoPE's at [T, 2T) before and after each fine-tune."""
    block = results["sweep"]["settings"]["block_size"]

    def mean_loss(curves: list[list[list[float]]], low: int, high: int) -> dict[str, float]:
        return _interval(np.array([np.mean(np.array(curve)[:, low:high], axis=1) for curve in curves]))

    summary = {}
    for name, records in results["runs"].items():
        extensions = [record["extension"] for record in records if "extension" in record]
        if not extensions:
            continue
        for low, high in ((0, block), (block, 2 * block), (2 * block, 4 * block)):
            summary[f"{name} trained, positions {low}-{high - 1}"] = mean_loss(
                [extension["trained"] for extension in extensions], low, high)
    rope = [record["extension"] for record in results["runs"][results["sweep"]["baseline"]] if "extension" in record]
    for key in ("direct before", "direct after", "interpolated before", "interpolated after"):
        summary[f"RoPE {key}, positions {block}-{2 * block - 1}"] = mean_loss(
            [extension[key] for extension in rope], block, 2 * block)
    return summary
