"""The case studies' data (notebook 09): generated people and records, the passage, insertion,
retraining without a request, forget sets and the measurements at the tiny profile."""
import pytest

from tutorial_lib.core.canaries import RandomnessSpace
from tutorial_lib.core.models import ModelConfig
from tutorial_lib.core.profiles import PROFILES, model_scale
from tutorial_lib.experiments.case_studies import train_case_study_model
from tutorial_lib.experiments.case_study_data import (
    CaseStudyConfig,
    build_case_study,
    make_people,
)


def test_people_are_distinct_seeded_and_their_secrets_lie_in_the_space():
    space = RandomnessSpace(4)
    people = make_people(50, space, seed=3)
    assert people == make_people(50, space, seed=3) and people != make_people(50, space, seed=4)
    assert len({p.name for p in people}) == 50
    for p in people[:5]:
        space.index(p.phone), space.index(p.account)
        record = p.record("invoice 1")
        assert record.startswith(p.head + p.phone + " acct " + p.account) and p.email in record and p.address in record
        phone, account = p.canaries(space, 7)
        assert phone.text() == p.head + p.phone and account.text() == p.head + p.phone + " acct " + p.account
        assert phone.insertions == account.insertions == 7
    with pytest.raises(ValueError, match="at most"):
        make_people(10**6, space)


def test_the_case_study_inserts_every_request_where_it_says():
    cfg = CaseStudyConfig.for_profile("tiny")
    study = build_case_study(cfg, seed=0)
    assert study.lines == build_case_study(cfg, seed=0).lines
    assert len(study.positions["subject"]) == cfg.subject_records * cfg.subject_repeats
    assert [study.lines[i] for i in study.positions["subject"]].count(study.subject_lines[0]) == cfg.subject_repeats
    assert sorted(study.lines[i] for i in study.positions["members"]) == sorted(study.member_lines)
    passage_lines = study.passage.split("\n")
    assert len(study.positions["passage"]) == len(passage_lines) * cfg.passage_repeats
    assert len(study.passage) >= cfg.passage_chars
    assert not set(study.outsider_lines) & set(study.lines)  # outsiders are never seen
    assert len(study.lines_without("subject", "passage")) == len(study.lines) - len(study.positions["subject"]) - len(study.positions["passage"])
    assert study.subject.name not in "\n".join(study.lines_without("subject"))
    secrets = study.pii_forget_items("secrets")
    assert len(secrets) == cfg.subject_records * cfg.subject_repeats
    assert all(target in line for (_, target), line in zip(secrets, study.subject_lines * cfg.subject_repeats))
    records = study.pii_forget_items("records")  # every record, in chunks, once per occurrence
    per_copy = records[: len(records) // cfg.subject_repeats]
    assert "".join(t for _, t in per_copy) == "".join(study.subject_lines)  # each chunked after its line break
    assert max(len(c) + len(t) for c, t in records) <= cfg.model.n_positions
    with pytest.raises(ValueError, match="records' or 'secrets'"):
        study.pii_forget_items("names")
    chunks = study.passage_chunks()
    assert "".join(t for _, t in chunks) == study.passage  # chunked after the line break before it
    assert len(study.passage_forget_items()) == len(chunks) * cfg.passage_repeats


@pytest.mark.parametrize("kwargs, match", [
    (dict(corpus="klingon"), "unknown corpus"), (dict(subject_repeats=0), "subject_repeats"),
    (dict(extract_prefix=40, extract_length=40), "positions"),
])
def test_bad_case_study_configs_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaseStudyConfig.for_profile("tiny", **kwargs)


def test_the_case_study_runs_at_the_model_scale():
    """``small`` runs the tiny-scale case study (CPU), ``full`` the small-scale one: ``profile`` holds the scale."""
    for profile in PROFILES:
        cfg = CaseStudyConfig.for_profile(profile)
        assert cfg.profile == model_scale(profile) and cfg.model == ModelConfig.for_profile(model_scale(profile))
    assert CaseStudyConfig.for_profile("small") == CaseStudyConfig.for_profile("tiny")
    tiny, full = CaseStudyConfig.for_profile("tiny"), CaseStudyConfig.for_profile("full")
    assert (tiny.secret_length, tiny.train.steps, tiny.train.eval_steps) == (4, 3 * 150, ())  # three times the canary runs' steps
    assert (full.secret_length, full.train.steps, full.model.n_embd) == (6, 800, 96)
    assert CaseStudyConfig.for_profile("small", subject_repeats=2).subject_repeats == 2


def test_retraining_without_an_unknown_request_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'subject' or 'passage'"):
        train_case_study_model(CaseStudyConfig.for_profile("tiny"), without=("everyone",), cache_dir=tmp_path)
