"""``python -m tutorial_lib unlearn``: a saved model forgets the lines of a file and is saved again with a
report; the input folder is untouched; bad input is exit 2, a refused update exit 1 with nothing written."""
import hashlib
import json

import pytest
import torch

from tutorial_lib.core.models import ModelConfig, load_pretrained, make_model
from tutorial_lib.unlearning.cli import main

RETAIN = [f"line {i}: to be or not to be, that is the question of line {i}" for i in range(60)]
VALIDATION = [f"held out {i}: whether tis nobler in the mind to suffer {i}" for i in range(20)]
FAST = ["--profile", "tiny", "--set", "repeats=1", "--set", "n_fisher=8", "--set", "block_size=16", "--no-progress"]


def _digest(folder) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def saved(tmp_path, byte_tokenizer):
    """A micro GPT-2 and the byte tokenizer saved with save_pretrained, forget, retain and validation files."""
    folder = tmp_path / "model"
    model = make_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32), len(byte_tokenizer), seed=0)
    model.save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    (tmp_path / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    (tmp_path / "validation.txt").write_text("\n".join(VALIDATION) + "\n")
    (tmp_path / "forget.txt").write_text("the secret is 4242\n\nthe secret is 4242\nanother private line\n")
    return folder, model


def _args(folder, tmp_path, *extra):
    return ["--model", str(folder), "--forget", str(tmp_path / "forget.txt"), "--out", str(tmp_path / "out"), *extra]


def test_round_trip_writes_a_loadable_model_and_a_report(saved, tmp_path, capsys):
    folder, model = saved
    untouched = _digest(folder)
    code = main(_args(folder, tmp_path, "--retain", str(tmp_path / "retain.txt"), "--validation", str(tmp_path / "validation.txt"),
                      "--canary", "the secret is {secret}", "--secret", "4242", *FAST, "--set", "eta=0.5"))
    assert code == 0
    assert "fisher_removal:" in capsys.readouterr().out
    out = tmp_path / "out"
    report = json.loads((out / "unlearning_report.json").read_text())
    assert report["method"] == "fisher_removal" and report["k"] == 3 and report["n_train"] == 63
    assert report["config"]["eta"] == 0.5 and report["config"]["repeats"] == 1
    before, after = report["before"], report["after"]
    for measure in ("forget_loss", "retain_perplexity", "validation_perplexity", "exposure"):
        assert isinstance(before[measure], float) and isinstance(after[measure], float), measure
    assert after["forget_loss"] > before["forget_loss"]  # forgetting raised the loss on the forget lines
    assert 0 <= after["exposure"] <= report["canary"]["bits"] and report["wall_seconds"] >= report["unlearning_seconds"] > 0
    markdown = (out / "unlearning_report.md").read_text()
    assert "| forget loss (nats/token) |" in markdown and "| canary exposure (bits) |" in markdown
    loaded, tokenizer = load_pretrained(out)
    assert tokenizer("pin 42")["input_ids"] == load_pretrained(folder)[1]("pin 42")["input_ids"]
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert _digest(folder) == untouched  # the input folder is never written to


def test_without_validation_or_canary_the_report_says_none(saved, tmp_path):
    folder, _ = saved
    assert main(_args(folder, tmp_path, "--retain", str(tmp_path / "retain.txt"), *FAST)) == 0
    report = json.loads((tmp_path / "out" / "unlearning_report.json").read_text())
    assert report["before"]["validation_perplexity"] is None and report["after"]["exposure"] is None and report["canary"] is None
    assert "n/a" in (tmp_path / "out" / "unlearning_report.md").read_text()


def test_bad_input_exits_2_and_a_refused_update_1(saved, tmp_path, capsys):
    folder, _ = saved
    out, retain = tmp_path / "out", ["--retain", str(tmp_path / "retain.txt")]
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "not_a_model").mkdir()
    cases = [
        (_args(folder, tmp_path, *FAST), "needs a retain set"),
        (["--model", str(folder), "--forget", str(tmp_path / "empty.txt"), "--out", str(out), *retain, *FAST], "--forget"),
        (["--model", str(folder), "--forget", str(tmp_path / "missing.txt"), "--out", str(out), *retain, *FAST], "no such file"),
        (_args(folder, tmp_path, *retain, *FAST, "--set", "speed=3"), "unknown override 'speed'"),
        (_args(tmp_path / "nowhere", tmp_path, *retain, *FAST), "not found"),
        (_args(tmp_path / "not_a_model", tmp_path, *retain, *FAST), "holds no config.json"),
        (_args(folder, tmp_path, *retain, *FAST, "--canary", "pin {secret}"), "--canary and --secret go together"),
        (_args(folder, tmp_path, *retain, *FAST, "--canary", "pin", "--secret", "42"), "no {secret} slot"),
        (["--model", str(folder), "--forget", str(tmp_path / "forget.txt"), "--out", str(folder), *retain, *FAST], "never overwritten"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, message
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: an unknown method
        main(_args(folder, tmp_path, *retain, "--method", "newton"))
    assert exit_.value.code == 2 and "invalid choice: 'newton'" in capsys.readouterr().err
    assert main(_args(folder, tmp_path, *retain, *FAST, "--set", "max_update_norm=1e-12")) == 1
    assert "refused" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m tutorial_lib unlearn" in capsys.readouterr().out
