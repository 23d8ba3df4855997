"""Which experiment a re-run notebook's run_fit trains in: crash-resume here, else `name_1`."""

from __future__ import annotations

from pathlib import Path

from rapidfire_core.fit.rerun import choose_experiment, latest_of_family, next_free_name


def _experiment(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "runs.db").touch()


def _run(status: str, fingerprint: str = "a", interrupted: bool = False, sweep: int = 1, parent=None) -> dict:
    return {"status": status, "fingerprint": fingerprint, "interrupted": interrupted, "sweep": sweep,
            "parent_run_id": parent}  # fmt: skip


def _choose(root, stored: dict[str, list[dict]], fingerprints=("a",), resume=None, automatic=False):
    return choose_experiment(
        root, "exp", lambda name: stored.get(name, []), list(fingerprints), resume, automatic
    )


def test_names_count_on_as_rapidfire_ai_counts(tmp_path):
    assert next_free_name(tmp_path, "exp") == "exp_1"
    _experiment(tmp_path, "exp_1")
    assert next_free_name(tmp_path, "exp") == "exp_2"
    assert next_free_name(tmp_path, "exp_1") == "exp_2"  # a trailing _<n> counts on
    assert next_free_name(tmp_path, "exp1-chatqa") == "exp1-chatqa_1"
    _experiment(tmp_path, "exp")
    assert latest_of_family(tmp_path, "exp") == "exp_1"


def test_first_sweep_and_an_unfinished_one_train_in_the_opened_experiment(tmp_path):
    _experiment(tmp_path, "exp")
    assert _choose(tmp_path, {}).name == "exp"
    crashed = {"exp": [_run("COMPLETED"), _run("STOPPED", interrupted=True)]}
    assert _choose(tmp_path, crashed, fingerprints=("a", "a")).name == "exp"
    in_flight = {"exp": [_run("ONGOING")]}
    assert _choose(tmp_path, in_flight).notice is None


def test_a_finished_or_changed_sweep_or_a_search_starts_name_1_with_a_notice(tmp_path):
    _experiment(tmp_path, "exp")
    finished = {"exp": [_run("COMPLETED"), _run("STOPPED")]}  # stopped by a command: finished
    choice = _choose(tmp_path, finished, fingerprints=("a", "a"))
    assert choice.name == "exp_1" and "already holds this sweep, finished" in choice.notice
    changed = _choose(tmp_path, {"exp": [_run("STOPPED", interrupted=True)]}, fingerprints=("b",))
    assert changed.name == "exp_1" and "holds runs of other configs" in changed.notice
    search = _choose(tmp_path, {"exp": [_run("STOPPED", interrupted=True)]}, automatic=True)
    assert search.name == "exp_1"
    assert _choose(tmp_path, finished, resume=False).name == "exp"  # an explicit choice stays here


def test_a_rerun_follows_the_family_to_its_latest_member(tmp_path):
    _experiment(tmp_path, "exp")
    _experiment(tmp_path, "exp_1")
    crashed_second = {"exp": [_run("COMPLETED")], "exp_1": [_run("ONGOING")]}
    choice = _choose(tmp_path, crashed_second)
    assert choice.name == "exp_1" and "Continuing the unfinished sweep of experiment 'exp_1'" in choice.notice
    assert _choose(tmp_path, {"exp": [_run("COMPLETED")], "exp_1": [_run("COMPLETED")]}).name == "exp_2"
