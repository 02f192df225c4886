"""Per-rank training state under DDP and FSDP2, measured on 2 gloo processes launched by torchrun."""

import subprocess
import sys

import pytest

from llama_course.config import PRESETS, count_parameters
from llama_course.measurements.sharding_memory import BYTES_PER_PARAMETER, expected_rank_bytes, read_reports


def test_ddp_replicates_and_fsdp_shards_the_16_bytes_per_parameter(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
               "llama_course.measurements.sharding_memory", "--preset", "tiny", "--output", str(tmp_path)]
    launch = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert launch.returncode == 0, launch.stderr[-3000:]
    reports = read_reports(tmp_path)
    n = count_parameters(PRESETS["tiny"])
    assert [report["rank"] for report in reports] == [0, 1]
    for report in reports:
        assert report["parameters_total"] == n
        assert report["ddp"] == {"parameters": 4 * n, "gradients": 4 * n, "optimizer_states": 8 * n}
    # FSDP2 pads each tensor's first dimension to a multiple of the world size; the tiny preset's are even,
    # so the two shards hold exactly half of everything each.
    fsdp = [report["fsdp"] for report in reports]
    assert fsdp[0] == fsdp[1] == {"parameters": 2 * n, "gradients": 2 * n, "optimizer_states": 4 * n}


def test_expected_bytes_follow_the_textbook_rule():
    assert expected_rank_bytes(1000, 4, "ddp") == {"parameters": 4000, "gradients": 4000, "optimizer_states": 8000}
    assert expected_rank_bytes(1000, 4, "fsdp") == {"parameters": 1000, "gradients": 1000, "optimizer_states": 2000}
    assert sum(BYTES_PER_PARAMETER.values()) == 16
    with pytest.raises(ValueError, match="'zero2'"):
        expected_rank_bytes(1000, 4, "zero2")


def test_reading_an_empty_folder_says_how_to_fill_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="torchrun"):
        read_reports(tmp_path)
