"""Activation memory of one Llama block under tensor and sequence parallelism: the formula and the measurement.

Korthikanti et al. (2022, section 4) count the bytes a GPT layer keeps for the backward pass, with 16-bit
activations, sequence s, micro-batch b, hidden size h, a heads and tensor-parallel degree t:
`sbh(34 + 5as/h)` without parallelism, `sbh(10 + 24/t + 5as/(ht))` with TP, `sbh(34 + 5as/h)/t` with TP and
sequence parallelism (SP), `34sbh/t` when the attention core is also recomputed. Their block has GeLU, two
LayerNorms and dropout, and stores the (a, s, s) attention probabilities.

`llama_activation_terms` re-derives the count for the Llama block as this package runs it: RMSNorm, SwiGLU (three
matrices, hidden size f), no dropout, grouped-query attention (KV width h_kv = n_kv_heads * head_dim) and a
flash-style attention (SDPA, or Llama 1's memory-efficient kernel) that keeps a log-sum-exp per query and head
instead of the probabilities, so the `5as/h` term is gone without recomputing anything. Per layer, in elements:

    RMSNorm (both): input 2sbh (kept in float32), 1/rms 2sb, normalised input 2sbh
    inputs of wq/wk/wv and of w1/w3 (the norms' outputs): 2sbh
    attention: queries sbh, keys and values 2sb h_kv, output (input of wo) sbh, log-sum-exp sba
    SwiGLU: w1 x, silu(w1 x), w3 x and their product (input of w2): 4sbf
    rotary tables: 2 s head_dim (the complex factors of q and k, shared by the batch)

TP divides the attention and SwiGLU terms by t; SP also divides the norms' terms. The inputs of the column-parallel
layers stay whole under PyTorch's SP: DTensor keeps the all-gathered input for the weight gradient, where
Megatron-LM keeps the rank's sequence shard and gathers it again in backward (`gathered_inputs_kept=False`).

`ScaleOutPlan`, `per_gpu_memory` and `communication_per_step` put the formula to work for a whole model: what a
GPU holds and sends per step under FSDP alone or TP + SP + data parallelism (chapter 9's Llama 1 65B table).

`measure_block_activation_bytes` measures the same quantity on a real `TransformerBlock` (optionally split over a
tensor mesh) with `profiling.bytes_kept_for_backward`. Run on 2 CPU processes, it writes `rank{r}.json`:

    torchrun --nproc_per_node 2 -m llama_course.measurements.activation_memory --output runs/activations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.layers.rope import rope_angles
from llama_course.measurements.profiling import bytes_kept_for_backward
from llama_course.model import TransformerBlock
from llama_course.training.distributed import init_distributed, shutdown_distributed
from llama_course.training.parallel import block_plan, check_tensor_parallel_degree, shard_attention_heads

SCHEMES = {"none": (1, False), "tp": (None, False), "tp+sp": (None, True)}  # name -> (degree, sequence parallel)


@dataclass(frozen=True)
class ActivationTerm:
    name: str
    elements: float  # per layer and rank
    bytes_per_element: int

    @property
    def bytes(self) -> float:
        return self.elements * self.bytes_per_element


def llama_activation_terms(
    config: ModelConfig,
    seq_len: int,
    batch_size: int,
    *,
    tensor_parallel: int = 1,
    sequence_parallel: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    gathered_inputs_kept: bool = True,
) -> list[ActivationTerm]:
    """What one Llama block keeps for backward on one rank, term by term (see the module docstring)."""
    check_tensor_parallel_degree(config, tensor_parallel)
    s, b, h, t = seq_len, batch_size, config.dim, tensor_parallel
    if sequence_parallel and s % t:
        raise ValueError(f"seq_len={s} is not divisible by tensor_parallel={t}: sequence parallelism splits it")
    h_kv, f, a = config.n_kv_heads * config.head_dim, config.hidden_dim, config.n_heads
    activation = torch.empty((), dtype=dtype).element_size()
    compute = max(activation, 4)  # norms, log-sum-exp and rotary tables are computed in at least float32
    norms = t if sequence_parallel else 1  # SP splits the norms' sequence
    gathered = 1 if gathered_inputs_kept or not sequence_parallel else t
    return [
        ActivationTerm("RMSNorm inputs (float32)", 2 * s * b * h / norms, compute),
        ActivationTerm("RMSNorm 1/rms", 2 * s * b / norms, compute),
        ActivationTerm("RMSNorm normalised inputs", 2 * s * b * h / norms, activation),
        ActivationTerm("inputs of wq/wk/wv and w1/w3", 2 * s * b * h / gathered, activation),
        ActivationTerm("queries", s * b * h / t, activation),
        ActivationTerm("keys and values", 2 * s * b * h_kv / t, activation),
        ActivationTerm("attention output (input of wo)", s * b * h / t, activation),
        ActivationTerm("attention log-sum-exp", s * b * a / t, compute),
        ActivationTerm("SwiGLU: w1 x, silu(w1 x), w3 x, product", 4 * s * b * f / t, activation),
        ActivationTerm("rotary tables (q and k)", 2 * s * config.head_dim, compute),
    ]


def llama_activation_bytes(config: ModelConfig, seq_len: int, batch_size: int, **options) -> float:
    """Bytes one Llama block keeps for backward on one rank: the sum of `llama_activation_terms`."""
    return sum(term.bytes for term in llama_activation_terms(config, seq_len, batch_size, **options))


def korthikanti_activation_bytes(
    seq_len: int, batch_size: int, dim: int, n_heads: int, *, tensor_parallel: int = 1,
    sequence_parallel: bool = False, selective_recompute: bool = False,
) -> float:
    """Korthikanti et al. (2022), Table 2: bytes per GPT layer (16-bit activations, GeLU, dropout)."""
    s, b, h, a, t = seq_len, batch_size, dim, n_heads, tensor_parallel
    attention_core = 0 if selective_recompute else 5 * a * s / h
    if sequence_parallel:
        return s * b * h * (34 + attention_core) / t
    return s * b * h * (10 + (24 + attention_core) / t)


@dataclass(frozen=True)
class ScaleOutPlan:
    """How `tensor_parallel x data_parallel` GPUs share a model trained with bf16 compute, fp32 AdamW states.

    `shard_weights`: FSDP / ZeRO-3 over the data ranks (weights, gradients and states sharded, a block's bf16
    weights gathered while it computes, the next one prefetched); otherwise ZeRO-1 as in Megatron-LM (bf16
    weights and fp32 gradients replicated over the data ranks, fp32 master weights and moments sharded).
    """

    name: str
    tensor_parallel: int
    data_parallel: int
    shard_weights: bool
    sequence_parallel: bool = True
    gathered_inputs_kept: bool = True  # PyTorch's SP; False: Megatron-LM re-gathers them in backward


def per_gpu_memory(config: ModelConfig, plan: ScaleOutPlan, seq_len: int, micro_batch: int = 1) -> dict[str, float]:
    """Bytes one GPU holds at the peak of a micro-batch: training state, gathered weights, activations.

    Activations are kept for the whole backward (no recomputation); the logits are not counted (the fused,
    chunked output projection and cross-entropy never hold them whole).
    """
    n, t, d = count_parameters(config), plan.tensor_parallel, plan.data_parallel
    block = count_parameters(config) - count_parameters(dataclasses.replace(config, n_layers=config.n_layers - 1))
    if plan.shard_weights:
        state, gathered = 16 * n / (t * d), 2 * 2 * block / t
    else:
        state, gathered = (2 + 4) * n / t + 12 * n / (t * d), 0.0
    activations = config.n_layers * llama_activation_bytes(
        config, seq_len, micro_batch, tensor_parallel=t, sequence_parallel=plan.sequence_parallel and t > 1,
        gathered_inputs_kept=plan.gathered_inputs_kept)
    return {"training state": state, "gathered weights": gathered, "activations": activations}


def communication_per_step(
    config: ModelConfig, plan: ScaleOutPlan, seq_len: int, global_batch: int, micro_batch: int = 1
) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step of `global_batch` sequences, by scheme (ring collectives).

    Tensor parallelism, per micro-batch: 4 collectives per layer forward (all-gather before attention and
    SwiGLU, reduce-scatter after wo and w2, or 2 all-reduces without SP, the same bytes) and 4 backward, plus
    the embedding and output, each moving (t-1)/t of the (s, b, h) bf16 activations. Data parallelism: FSDP
    gathers the bf16 weights in forward and in backward of every micro-batch and reduce-scatters fp32 gradients
    once per step; ZeRO-1 reduce-scatters the gradients and all-gathers the updated bf16 weights once per step.
    """
    n, t, d, h = count_parameters(config), plan.tensor_parallel, plan.data_parallel, config.dim
    if global_batch % (d * micro_batch):
        raise ValueError(f"global_batch={global_batch} is not a multiple of data_parallel x micro_batch = "
                         f"{d * micro_batch}")
    micro_batches = global_batch // (d * micro_batch)
    activation_bytes = 2 * seq_len * micro_batch * h
    tensor = micro_batches * (8 * config.n_layers + 4) * (t - 1) / t * activation_bytes
    share = (d - 1) / d
    data = (micro_batches * 2 * 2 + 4) * n / t * share if plan.shard_weights else (4 + 2) * n / t * share
    return {"tensor parallel": tensor, "data parallel": data}


def measure_block_activation_bytes(
    config: ModelConfig, seq_len: int, batch_size: int, *, mesh: DeviceMesh | None = None,
    sequence_parallel: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0,
) -> int:
    """Bytes a `TransformerBlock` of `config` keeps for backward on this rank, its parameters not counted.

    With a 1-D tensor `mesh` the block is split by `training.parallel.block_plan` and, under SP, this rank's
    input is its slice of the sequence. Every rank of the mesh must call it.
    """
    torch.manual_seed(seed)
    block = TransformerBlock(config).to(dtype)
    local_len = seq_len
    if mesh is not None:
        check_tensor_parallel_degree(config, mesh.size())
        shard_attention_heads(block.attention, mesh.size())
        parallelize_module(block, mesh, block_plan(sequence_parallel))
        local_len = seq_len // mesh.size() if sequence_parallel else seq_len
    x = torch.randn(batch_size, local_len, config.dim, dtype=dtype, requires_grad=True)
    cos, sin = rope_angles(torch.arange(seq_len)[None], config.head_dim, config.rope_theta)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, head_dim/2)
    return bytes_kept_for_backward(lambda: block(x, cos, sin)[0], ignore=list(block.parameters())).total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure one block's activation bytes without TP, with TP, with "
                                                 "TP + SP, next to the Llama formula.")
    parser.add_argument("--output", type=Path, required=True, help="folder for rank{r}.json")
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the ranks share a 2-core laptop
    context = init_distributed("cpu")
    config = dataclasses.replace(PRESETS[args.preset], attention_backend="sdpa")
    mesh = init_device_mesh("cpu", (context.world_size,)) if context.is_distributed else None
    report = {"rank": context.rank, "tensor_parallel": context.world_size, "preset": args.preset,
              "seq_len": args.seq_len, "batch_size": args.batch_size}
    for name, (degree, sequence_parallel) in SCHEMES.items():
        used_mesh = mesh if degree is None else None
        report[name] = {
            "measured": measure_block_activation_bytes(config, args.seq_len, args.batch_size, mesh=used_mesh,
                                                       sequence_parallel=sequence_parallel),
            "formula": llama_activation_bytes(config, args.seq_len, args.batch_size, dtype=torch.float32,
                                              tensor_parallel=used_mesh.size() if used_mesh else 1,
                                              sequence_parallel=sequence_parallel),
        }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"rank{context.rank}.json").write_text(json.dumps(report, indent=1))
    shutdown_distributed()


if __name__ == "__main__":
    main()
