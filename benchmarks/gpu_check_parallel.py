"""GPU check of tensor + sequence parallelism and of the 2-D (FSDP2 x TP) mesh; rank 0 prints one JSON object.

Run on a machine with 2 or more CUDA GPUs (nccl, bf16 autocast, the small preset):

    torchrun --nproc_per_node 2 benchmarks/gpu_check_parallel.py   # TP=2 + SP
    torchrun --nproc_per_node 4 benchmarks/gpu_check_parallel.py   # also FSDP2 x TP on a 2 x 2 mesh

1. TP + SP over all GPUs: the loss falls, a weight is a DTensor holding 1/N of its rows, a run split at step 15
   and resumed from its Distributed Checkpoint matches the uninterrupted one, and the tokens/s.
2. With 4 or more GPUs, a (data, tensor) mesh with TP=2 and FSDP2 over the rest, on the same global batch: its
   losses against TP alone (bf16, so close rather than equal; the float64 CPU tests check equality).
The single-GPU checks (autocast, FSDP2 mixed precision, compile) are in benchmarks/gpu_check.py.
"""

import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
from gpu_check import learnable_blocks, max_gap, train

from llama_course.config import PRESETS


def tokens_per_second(trainer, steps: int, tokens_per_step: int) -> float:
    trainer.train_step()  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    torch.cuda.synchronize()
    return steps * tokens_per_step / (time.perf_counter() - start)


def main() -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        raise SystemExit("launch with torchrun on 2 or more GPUs: torchrun --nproc_per_node 2 "
                         "benchmarks/gpu_check_parallel.py")
    dist.init_process_group("nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    data = learnable_blocks(PRESETS["small"].vocab_size, 256, 128)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "world_size": world_size}
    with tempfile.TemporaryDirectory() as scratch:
        root = [scratch]
        dist.broadcast_object_list(root)  # every rank writes into rank 0's run directories
        tp = dict(steps=30, tensor_parallel=world_size)
        trainer, whole = train("small", data, f"{root[0]}/tp", **tp)
        weight = trainer.raw_model.layers[0].attention.wq.weight
        _, first = train("small", data, f"{root[0]}/tp_split", until=15, **tp)
        _, rest = train("small", data, f"{root[0]}/tp_split", **tp)
        report["tp_sp"] = {
            "first_loss": whole.losses[0], "last_loss": whole.losses[-1],
            "loss_fell": whole.losses[-1] < whole.losses[0] - 1.0, "parameter_type": type(weight).__name__,
            "wq_rows_local_of_total": [weight.to_local().shape[0], weight.shape[0]],
            "dcp_resume_max_loss_gap": max_gap(first.losses + rest.losses, whole.losses),
            "tokens_per_s": round(tokens_per_second(trainer, 10, 8 * 128), 1),
        }
        if world_size >= 4 and world_size % 2 == 0 and 8 % (world_size // 2) == 0:
            _, two_d = train("small", data, f"{root[0]}/2d", steps=30, tensor_parallel=2, parallelism="fsdp",
                             micro_batch_size=8 // (world_size // 2))
            report["fsdp_x_tp"] = {"mesh": [world_size // 2, 2], "last_loss": two_d.losses[-1],
                                   "max_loss_gap_vs_tp": max_gap(two_d.losses, whole.losses)}
        dist.barrier()
    if dist.get_rank() == 0:
        print(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
