import json

from tutorial_lib.reproduce import main


def test_reproduction_writes_tables_and_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "results"
    assert main(["--profile", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    table = (out / "memorization_exposure.md").read_text()
    assert "| canary | inserted |" in table and "100x" in table
    data = json.loads((out / "memorization_exposure.json").read_text())
    assert data["config"]["profile"] == "tiny" and "torch" in data["versions"]
    assert len(data["exposures"]) == len(data["canaries"])
    removal = (out / "fisher_removal.md").read_text()
    assert "| retrained oracle |" in removal and "| Fisher Removal |" in removal
    data = json.loads((out / "fisher_removal.json").read_text())
    assert data["results"]["Fisher Removal"]["exposure"][data["target"]] < data["results"]["original"]["exposure"][data["target"]]
    png = (out / "memorization_exposure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_warm_cache_trains_once_then_finds_every_model(tmp_path, monkeypatch):
    from tutorial_lib.warm_cache import warm

    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path / "cache"))
    first = warm("tiny", seed=0, device="cpu")
    assert [r["cached"] for r in first] == [False, False, False]
    assert [r["cached"] for r in warm("tiny", seed=0, device="cpu")] == [True, True, True]
    assert len(list((tmp_path / "cache").iterdir())) == 3
