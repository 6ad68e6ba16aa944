import json
import shutil

import pytest

from tutorial_lib.core.data import (
    CORPORA,
    DataError,
    corpus_path,
    data_dir,
    load_corpus,
    sha256_file,
    split_lines,
    verify_data,
)


def test_every_corpus_verifies_and_is_about_a_megabyte_of_ascii():
    sums = verify_data()
    assert set(sums) == set(CORPORA)
    for name in CORPORA:
        raw = corpus_path(name).read_bytes()
        assert raw.isascii()
        assert 400_000 <= len(raw) <= 1_100_000, name


def test_readme_lists_every_checksum():
    readme = (data_dir() / "README.md").read_text()
    for name, sha in verify_data().items():
        assert sha in readme, name


def test_split_is_deterministic_disjoint_and_complete():
    lines = [f"line {i}" for i in range(23456)]
    splits = split_lines(lines)
    train, val, test = splits.train, splits.validation, splits.test
    assert sorted(train + val + test) == sorted(lines)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert split_lines(lines) == splits
    assert 0.04 < len(val) / len(lines) < 0.06


def test_load_corpus_through_datasets_with_trim():
    splits = load_corpus("bible", max_chars=20_000)
    assert splits.train and splits.validation
    total = sum(len(x) + 1 for x in splits.train + splits.validation + splits.test)
    assert 20_000 <= total < 21_000
    assert load_corpus("bible", max_chars=20_000) == splits


def _copy_data(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data_dir(), folder)
    return folder


def test_missing_file_is_named(tmp_path):
    folder = _copy_data(tmp_path)
    (folder / "jargon.txt").unlink()
    with pytest.raises(DataError, match="jargon.*missing"):
        corpus_path("jargon", folder)


def test_corrupted_file_is_a_checksum_mismatch(tmp_path):
    folder = _copy_data(tmp_path)
    with open(folder / "shakespeare.txt", "a") as handle:
        handle.write("an extra line\n")
    with pytest.raises(DataError, match="checksum mismatch.*shakespeare"):
        load_corpus("shakespeare", directory=folder)


def test_wrong_checksum_in_the_list(tmp_path):
    folder = _copy_data(tmp_path)
    sums = json.loads((folder / "checksums.json").read_text())
    sums["bible.txt"]["sha256"] = "0" * 64
    (folder / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(DataError, match="expected sha256 0000"):
        corpus_path("bible", folder)
    assert sha256_file(folder / "bible.txt") != "0" * 64


def test_unknown_corpus():
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        corpus_path("wiki")


def _rewrite(folder, name, text):
    """Replace corpus file ``name`` with ``text``, keeping its modification time, and record its new sha256."""
    import os

    path = folder / name
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    sums = json.loads((folder / "checksums.json").read_text())
    sums[name]["sha256"] = sha256_file(path)
    (folder / "checksums.json").write_text(json.dumps(sums))


def test_an_edited_corpus_is_served_as_edited_even_with_its_mtime_kept(tmp_path):
    folder = _copy_data(tmp_path)
    before = load_corpus("jargon", max_chars=2_000, directory=folder)
    _rewrite(folder, "jargon.txt", "".join(f"edited line {i}\n" for i in range(400)))
    after = load_corpus("jargon", max_chars=2_000, directory=folder)
    assert after.train[0] == "edited line 0" and after.train != before.train


def test_an_empty_corpus_or_a_malformed_checksum_list_is_a_data_error(tmp_path):
    folder = _copy_data(tmp_path)
    _rewrite(folder, "bible.txt", "\n\n")
    with pytest.raises(DataError, match=r"bible.txt holds no text.*build_data.py"):
        load_corpus("bible", directory=folder)
    (folder / "checksums.json").write_text('{"shakespeare.txt": ')
    with pytest.raises(DataError, match=r"checksums.json is malformed.*restore it from git"):
        corpus_path("shakespeare", folder)
    (folder / "checksums.json").write_text('{"shakespeare.txt": {"size": 1}}')
    with pytest.raises(DataError, match=r"lacks 'shakespeare.txt'"):
        corpus_path("shakespeare", folder)
    assert (data_dir().parent / ".gitattributes").read_text().count("-text") >= 2  # corpora byte-exact on every checkout
