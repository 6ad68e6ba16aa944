"""``python -m tutorial_lib unlearn``: a saved model forgets texts and is saved again; bad input is exit 2,
a refused update exit 1 with nothing written."""
import json

import pytest
import torch

from tutorial_lib.core.models import ModelConfig, load_pretrained, make_model
from tutorial_lib.unlearning.cli import main

RETAIN = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60)]
FAST = ["--profile", "tiny", "--set", "repeats=1", "--set", "n_fisher=8", "--set", "block_size=16", "--no-progress"]


@pytest.fixture()
def saved(tmp_path, byte_tokenizer):
    """A micro GPT-2 and the byte tokenizer saved with save_pretrained, and a retain file."""
    folder = tmp_path / "model"
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0)
    model.save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    (tmp_path / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    return folder, model


def test_unlearns_and_saves_a_model_that_loads_back(saved, tmp_path, capsys):
    folder, model = saved
    (tmp_path / "forget.txt").write_text("the secret is 4242\n\nanother private line\n")
    out = tmp_path / "out"
    code = main([str(folder), "--out", str(out), "--forget", "the secret is 4242", "--forget-file", str(tmp_path / "forget.txt"),
                 "--retain-file", str(tmp_path / "retain.txt"), *FAST, "--set", "eta=0.5"])
    assert code == 0
    assert "fisher_removal:" in capsys.readouterr().out
    report = json.loads((out / "unlearning_report.json").read_text())
    assert report["k"] == 3 and report["n_train"] == 63 and report["config"]["eta"] == 0.5 and report["config"]["repeats"] == 1
    loaded, tokenizer = load_pretrained(out)
    assert tokenizer("pin 42")["input_ids"] == load_pretrained(folder)[1]("pin 42")["input_ids"]
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters())]
    assert any(changed) and report["update_norm"] > 0


def test_bad_input_exits_2_and_a_refused_update_1(saved, tmp_path, capsys):
    folder, _ = saved
    out, retain = tmp_path / "out", ["--retain-file", str(tmp_path / "retain.txt")]
    assert main([str(folder), "--out", str(out), "--forget", "the secret is 4242", *FAST]) == 2
    assert "needs a retain set" in capsys.readouterr().err
    assert main([str(folder), "--out", str(out), *retain, *FAST]) == 2
    assert "nothing to forget" in capsys.readouterr().err
    assert main([str(folder), "--out", str(out), "--forget", "x y z", *retain, *FAST, "--set", "speed=3"]) == 2
    assert "unknown override 'speed'" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--out", str(out), "--forget", "x y z", *retain, *FAST]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([str(folder), "--out", str(out), "--forget", "x y z", *retain, *FAST, "--set", "max_update_norm=1e-12"]) == 1
    assert "refused" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m tutorial_lib unlearn" in capsys.readouterr().out
