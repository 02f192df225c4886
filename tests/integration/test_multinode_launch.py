"""The multi-node launch form: two torchrun agents ("nodes" of one process each) meet through c10d rendezvous.

On a cluster each node runs the same `torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint HEAD:PORT ...`
(scripts/slurm_pretrain.sbatch); here both agents run on this machine and train one FSDP2 run together.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from local_processes import free_port

REPOSITORY = Path(__file__).resolve().parents[2]


def torchrun_node(port: int, output_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
               "-m", "llama_course.cli", "pretrain", "--output-dir", str(output_dir), "--preset", "tiny",
               "--set", "model.dim=64", "--set", "model.n_layers=2", "--device", "cpu", "--steps", "2",
               "--block-size", "32", "--batch-size", "2", "--parallelism", "fsdp", "--set", "data.documents=100",
               "--set", "data.validation_documents=0", "--set", "trainer.warmup_steps=1",
               "--set", "trainer.progress=false"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPOSITORY,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_two_torchrun_agents_with_c10d_rendezvous_train_one_run(tmp_path):
    port, output_dir = free_port(), tmp_path / "run"
    nodes = [torchrun_node(port, output_dir) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert any("2 process(es), fsdp" in output for output in outputs)
    state = json.loads((output_dir / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (2, 2)
    assert {path.name for path in (output_dir / "checkpoints" / "step_00000002").glob("rng_rank*.pt")} == {
        "rng_rank0.pt", "rng_rank1.pt"}


def test_the_slurm_script_launches_that_form_on_every_node():
    script = (REPOSITORY / "scripts" / "slurm_pretrain.sbatch").read_text()
    assert subprocess.run(["bash", "-n", "scripts/slurm_pretrain.sbatch"], cwd=REPOSITORY).returncode == 0
    for flag in ("srun torchrun", '--nnodes "$SLURM_NNODES"', "--rdzv-backend c10d",
                 '--rdzv-endpoint "$HEAD_NODE:29500"', "--tensor-parallel"):
        assert flag in script
