import shutil
import time
from pathlib import Path

import pytest

from tutorial_lib.course.warm_cache import warm_jobs
from tutorial_lib.course.workers import Job, JobResult, run_jobs


def _chain(tmp_path: Path) -> list[Job]:
    """Three jobs where b copies a's file and c copies b's: each fails unless its need ran first."""
    a, b, c = (tmp_path / n for n in "abc")
    return [Job("a", Path.write_text, (a, "hello")),
            Job("slow", time.sleep, (0.5,)),
            Job("b", shutil.copy, (a, b), needs=("a",)),
            Job("c", shutil.copy, (b, c), needs=("b", "slow"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_what_they_need_in_order_of_the_list(tmp_path, workers):
    lines = []
    results = run_jobs(_chain(tmp_path), workers=workers, progress=False, log=lines.append)
    assert [r.label for r in results] == ["a", "slow", "b", "c"]
    assert all(isinstance(r, JobResult) and r.cached is None and r.seconds >= 0 for r in results)
    assert (tmp_path / "c").read_text() == "hello"
    assert sorted(line.split(":")[0].strip() for line in lines) == ["a", "b", "c", "slow"]


def test_a_failing_job_raises_its_error(tmp_path):
    jobs = [Job("missing", shutil.copy, (tmp_path / "nope", tmp_path / "x"))]
    with pytest.raises(FileNotFoundError):
        run_jobs(jobs, workers=2, progress=False, log=None)


def test_bad_job_lists_and_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs"):
        run_jobs([Job("b", time.sleep, (0,), needs=("a",)), Job("a", time.sleep, (0,))], progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_jobs([Job("a", time.sleep, (0,)), Job("a", time.sleep, (0,))], progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_jobs(_chain(tmp_path), workers=0, progress=False)


@pytest.mark.parametrize("profile", ["tiny", "small"])
@pytest.mark.parametrize("reproduction", [False, True])
def test_every_study_waits_for_the_models_it_shares(profile, reproduction):
    jobs = warm_jobs(profile, seed=0, device="cpu", reproduction=reproduction)
    labels = [j.label for j in jobs]
    assert len(set(labels)) == len(labels)
    by_label = {j.label: j for j in jobs}
    run, oracle = labels[:2]
    for job in jobs[3:]:
        assert all(labels.index(n) < labels.index(job.label) for n in job.needs)
    for label in labels[3:]:  # the small-model studies wait for the two small models
        if label.startswith(("notebook 04", "notebook 05: noise", "notebook 06", "reproduction: unlearning")):
            assert {run, oracle} <= set(by_label[label].needs), label
    assert by_label["notebook 03: exact exposure and estimates"].needs == (run,)
    for label in labels:  # the profile's own DP study waits for the non-private run and its DP-SGD models, which need nothing
        if label.startswith("reproduction: DP-SGD at"):
            models = [n for n in labels if n.startswith("reproduction: DP-SGD model")]
            assert by_label[label].needs == (run, *models) and models and all(not by_label[m].needs for m in models), label
    for label in labels:  # a DP run, the relearning attack and the sensitivity study reuse a benchmark cell's model
        if label.startswith(("notebook 08", "notebook 10: relearning", "notebook 10: sensitivity")):
            assert any(n.startswith("benchmark,") for n in by_label[label].needs), label
    assert by_label["notebooks 05 and 10: sequential requests"].needs == ("notebooks 05 and 10: sequential-requests run",)
    cells = [label for label in labels if label.startswith("benchmark,")]
    assert len(cells) == (12 if reproduction and profile == "small" else len(set(cells)))
    if reproduction:
        assert "reproduction: unlearning methods" in labels
