"""Nothing a user may download runs code: a pickle payload planted in every file a loader reads stays inert.

Each payload, when unpickled, creates a marker file. Every test first proves its payload is live (a plain
unpickling creates the marker), then asserts that the package's loader refuses the file and the marker
never appears.
"""

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_training import TINY, sharded_checkpoint, sharded_hf_folder, tiny_blocks, tiny_config, tiny_model

from llama_course.interop import load_hf_checkpoint, load_meta_checkpoint, save_hf_checkpoint, save_meta_checkpoint
from llama_course.model import Llama
from llama_course.pretrained import consolidate_sharded
from llama_course.training.pretrain import load_trained_model
from llama_course.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this object calls `open(marker, "w")`: it stands for any code, e.g. `os.system`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "payload-ran"


def assert_live(path: Path, marker: Path) -> None:
    """The planted file really runs code when unpickled without protection (so the test can fail)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.name == ".metadata":
            with path.open("rb") as file:
                pickle.load(file)
        else:
            torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


METADATA = {"model_config": TINY.to_dict()}


def trained_run(output_dir: Path) -> Path:
    Trainer(tiny_model(), tiny_blocks(), tiny_config(steps=2, checkpoint_every=2), output_dir, metadata=METADATA).fit()
    return output_dir / "checkpoints" / "step_00000002"


@pytest.mark.parametrize("planted", ["rng_rank0.pt", "optimizer.pt"])
def test_resume_refuses_a_pickle_payload_in_the_training_state(tmp_path, marker, planted):
    checkpoint = trained_run(tmp_path / "run")
    torch.save({"torch": Payload(marker), "python": None}, checkpoint / planted)
    assert_live(checkpoint / planted, marker)
    with pytest.raises(ValueError, match=r"refusing to load .*holds more than tensors.*could run code"):
        Trainer(tiny_model(), tiny_blocks(), tiny_config(steps=4), tmp_path / "run", metadata=METADATA)
    assert not marker.exists()


def test_chat_and_sft_loading_of_a_run_never_read_its_pickles(tmp_path, marker):
    from llama_course.alignment.sft import load_base_model

    checkpoint = trained_run(tmp_path / "run")
    for name in ("rng_rank0.pt", "optimizer.pt"):
        torch.save({"torch": Payload(marker)}, checkpoint / name)
    model, _ = load_base_model(str(tmp_path / "run"))  # what `llama-course chat --checkpoint RUN` calls
    assert not marker.exists()
    expected = load_trained_model(checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters(), strict=True))


def test_sharded_checkpoints_are_refused_outside_a_resume_and_their_pickle_never_runs(tmp_path, marker):
    _, checkpoint = sharded_checkpoint(tmp_path / "run")
    with (checkpoint / "sharded" / ".metadata").open("wb") as file:
        pickle.dump(Payload(marker), file)
    assert_live(checkpoint / "sharded" / ".metadata", marker)
    with pytest.raises(ValueError, match=r"sharded \(Distributed Checkpoint\).*pretrained consolidate"):
        load_trained_model(tmp_path / "run")
    assert not marker.exists()


def test_consolidation_writes_a_safe_single_file_copy_with_the_same_weights(tmp_path):
    model, checkpoint = sharded_checkpoint(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        consolidated = consolidate_sharded(tmp_path / "run", tmp_path / "shared")
    assert sorted(p.name for p in consolidated.iterdir()) == ["model.safetensors", "trainer_state.json"]
    loaded = load_trained_model(consolidated)
    for (name, got), expected in zip(loaded.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(got, expected), name
    with pytest.raises(FileExistsError, match="already exists"):
        consolidate_sharded(checkpoint, tmp_path / "shared")


def test_hf_bin_and_meta_pth_payloads_are_refused(tmp_path, marker):
    model = Llama(TINY)
    save_hf_checkpoint(model, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save({"lm_head.weight": Payload(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    assert_live(tmp_path / "hf" / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match="holds more than tensors"):
        load_hf_checkpoint(tmp_path / "hf")
    save_meta_checkpoint(model, tmp_path / "meta")
    torch.save({"output.weight": Payload(marker)}, tmp_path / "meta" / "consolidated.00.pth")
    with pytest.raises(ValueError, match="holds more than tensors"):
        load_meta_checkpoint(tmp_path / "meta")
    assert not marker.exists()


def test_index_json_naming_a_file_outside_the_folder_is_refused(tmp_path):
    model = Llama(TINY)
    weight_map = sharded_hf_folder(tmp_path / "hf", model)
    loaded = load_hf_checkpoint(tmp_path / "hf")  # the sharded folder itself loads
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True))
    (tmp_path / "b.safetensors").write_bytes((tmp_path / "hf" / "b.safetensors").read_bytes())
    for outside in ("../b.safetensors", str(tmp_path / "b.safetensors")):
        edited = {name: (outside if shard == "b.safetensors" else shard) for name, shard in weight_map.items()}
        (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": edited}))
        with pytest.raises(ValueError, match=f"names the shard {outside!r}.*outside the checkpoint folder"):
            load_hf_checkpoint(tmp_path / "hf")


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    from safetensors.torch import load_file

    sharded_hf_folder(tmp_path / "hf", Llama(TINY))
    first = load_file(tmp_path / "hf" / "a.safetensors")
    name = sorted(first)[0]
    second = load_file(tmp_path / "hf" / "b.safetensors") | {name: torch.zeros_like(first[name])}
    save_file(second, tmp_path / "hf" / "b.safetensors")
    with pytest.raises(ValueError, match=f"a.safetensors and b.safetensors .* both hold \\['{name}'\\]"):
        load_hf_checkpoint(tmp_path / "hf")

