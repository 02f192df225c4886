"""Tensor and sequence parallelism for the Llama block, and 2D (data x tensor) meshes, applied from outside the model.

Llama 1 trained its 65B model with "model and sequence parallelism, as described by Korthikanti et al. (2022)"
(section 2.4). Tensor parallelism (TP, Megatron-LM: Shoeybi et al. 2019) splits every weight matrix of a block
over the `t` ranks of a `DeviceMesh` dimension, so that each rank stores and multiplies 1/t of it:

- attention: `wq`, `wk`, `wv` column-parallel (rank r computes query heads [r H/t, (r+1) H/t) and KV heads
  [r Hkv/t, (r+1) Hkv/t); under GQA query head h reads KV head h // (H/Hkv), which lands on the same rank),
  the attention itself runs on the local heads with no communication, `wo` row-parallel: its partial outputs
  are summed over the ranks (all-reduce, or reduce-scatter under SP);
- SwiGLU: `w1`, `w3` column-parallel, `silu(w1 x) * w3 x` element-wise on the local hidden slice, `w2`
  row-parallel;
- the embedding and the output projection split the vocabulary, and the cross-entropy is computed on the
  vocabulary-sharded logits (`loss_parallel`: a max and a sum-of-exponentials all-reduced, never the full logits).

Sequence parallelism (SP, Korthikanti et al. 2022) also splits what TP leaves whole: between the TP regions the
residual stream, the RMSNorms and their activations are sharded along the sequence. The all-reduce after `wo`
and `w2` becomes a reduce-scatter (to sequence shards) and an all-gather before `wq`/`w1`: the same bytes
moved, 1/t of the activations stored.

Everything is PyTorch's own stack (`torch.distributed.tensor.parallel` on a `DeviceMesh`, FSDP2 over the data
dimension), as in torchtitan. `Llama` is untouched; the only attributes TP changes are each `Attention`'s head
counts, which become the LOCAL counts that its forward reshapes with.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from llama_course.config import ModelConfig
from llama_course.training.distributed import apply_fsdp, broadcast_parameters, transformer_blocks

DATA, TENSOR = "data", "tensor"  # the mesh dimension names


def check_tensor_parallel_degree(config: ModelConfig, degree: int) -> None:
    """Raise a ValueError naming the first size of `config` that `degree` ranks cannot split evenly."""
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"tensor_parallel={degree!r} must be a positive integer")
    sizes = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "vocab_size": config.vocab_size,
             "hidden_dim": config.hidden_dim}
    for name, size in sizes.items():
        if size % degree:
            raise ValueError(f"{name}={size} is not divisible by tensor_parallel={degree}: each rank must hold "
                             f"an equal share; choose a tensor-parallel degree that divides {size}")


def build_mesh(device_type: str, world_size: int, tensor_parallel: int) -> DeviceMesh:
    """The (data, tensor) mesh of `world_size` ranks: consecutive ranks form a tensor-parallel group.

    Consecutive ranks are the GPUs of one node under torchrun, so TP's per-layer collectives stay on NVLink and
    only data parallelism (one gradient reduction per step) crosses the network.
    """
    if world_size % tensor_parallel:
        raise ValueError(f"the world size {world_size} is not divisible by tensor_parallel={tensor_parallel}; "
                         "launch a multiple of the tensor-parallel degree of processes")
    shape = (world_size // tensor_parallel, tensor_parallel)
    return init_device_mesh(device_type, shape, mesh_dim_names=(DATA, TENSOR))


def data_parallelism(parallelism: str, mesh: DeviceMesh) -> str:
    """The strategy over the mesh's data dimension: "fsdp" when it has several ranks, "none" otherwise."""
    if parallelism not in ("auto", "none", "fsdp"):
        raise ValueError(f"parallelism={parallelism!r} cannot be combined with tensor parallelism; use 'fsdp' (FSDP2 "
                         "over the data dimension of the mesh) or 'auto'")
    if mesh[DATA].size() == 1:
        return "none"
    if parallelism == "none":
        raise ValueError(f"parallelism='none' leaves {mesh[DATA].size()} data-parallel ranks unsynchronised; use "
                         "'fsdp' or 'auto', or launch tensor_parallel processes only")
    return "fsdp"


class ReplicatedNorm(ParallelStyle):
    """TP without SP: the norm's gain is a Replicate DTensor and its input and output are whole local tensors.

    The gain could stay a plain tensor, but then the gradient-norm clipping and FSDP would see parameters on two
    kinds of mesh; as a DTensor it lives on the tensor mesh like every other parameter.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def to_dtensor(_: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
            return tuple(DTensor.from_local(x, mesh, [Replicate()], run_check=False) for x in inputs)

        return distribute_module(module, device_mesh, input_fn=to_dtensor,
                                 output_fn=lambda _, output, mesh: output.to_local())


def block_plan(sequence_parallel: bool = True) -> dict[str, ParallelStyle]:
    """The TP (and SP) plan of one `TransformerBlock`, keyed by submodule name.

    Without SP the block's input is whole on every rank; with SP it is the rank's slice of the sequence
    (dimension 1), gathered before `wq`/`wk`/`wv` and `w1`/`w3` and reduce-scattered after `wo` and `w2`.
    """
    plan: dict[str, ParallelStyle] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
    }
    if not sequence_parallel:
        return plan | {"attention_norm": ReplicatedNorm(), "ffn_norm": ReplicatedNorm(),
                       "attention.wo": RowwiseParallel(), "feed_forward.w2": RowwiseParallel()}
    return plan | {
        "attention_norm": SequenceParallel(),
        # attention(x, cos, sin, ...): gather x's sequence shards; cos and sin are whole on every rank
        "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                        desired_input_layouts=(Replicate(), None, None)),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
    }


def shard_attention_heads(attention: nn.Module, degree: int) -> None:
    """Make `attention` reshape with its local head counts (the column-parallel wq/wk/wv hold 1/degree of each)."""
    attention.n_heads //= degree
    attention.n_kv_heads //= degree


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool = True) -> nn.Module:
    """Split `model` (a `Llama`, the same on every rank) over the 1-D tensor mesh `mesh`, in place.

    The embedding splits the vocabulary (row-parallel over its rows); the output projection too (column-parallel
    over the vocabulary) and returns logits as a vocabulary-sharded DTensor, for `loss_parallel` cross-entropy.
    With SP every sequence fed to the model must have a length divisible by the degree.
    """
    degree = mesh.size()
    check_tensor_parallel_degree(model.config, degree)
    for block in transformer_blocks(model):
        shard_attention_heads(block.attention, degree)
        parallelize_module(block, mesh, block_plan(sequence_parallel))
    between_blocks = Shard(1) if sequence_parallel else Replicate()
    parallelize_module(model, mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=between_blocks),
        "norm": SequenceParallel() if sequence_parallel else ReplicatedNorm(),
        "output": ColwiseParallel(input_layouts=between_blocks, output_layouts=Shard(-1), use_local_output=False),
    })
    if sequence_parallel:
        model.register_forward_pre_hook(_sequence_length_check(degree))
    return model


def _sequence_length_check(degree: int) -> Callable[[nn.Module, tuple], None]:
    def check(_: nn.Module, args: tuple) -> None:
        length = args[0].shape[1]
        if length % degree:
            raise ValueError(f"sequence length {length} is not divisible by tensor_parallel={degree}: sequence "
                             f"parallelism gives each rank an equal slice; use a block size that is a multiple "
                             f"of {degree}")
    return check


def parallelize_2d(
    model: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool = True, mixed_precision: bool = False
) -> nn.Module:
    """TP (+ SP) over the mesh's tensor dimension, then FSDP2 over its data dimension (when larger than 1).

    As in torchtitan, TP comes first: FSDP then shards each TP shard again along the data dimension, so a
    parameter becomes a DTensor on the 2-D mesh and every rank stores 1/(data x tensor) of it.
    """
    broadcast_parameters(model)  # every rank starts from rank 0's weights
    apply_tensor_parallel(model, mesh[TENSOR], sequence_parallel=sequence_parallel)
    if mesh[DATA].size() > 1:
        apply_fsdp(model, mesh=mesh[DATA], mixed_precision=mixed_precision)
    return model
