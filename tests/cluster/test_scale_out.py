"""Sweeps on 2 executors (Ray actors of one CPU each, driven by the one run controller) give
the numbers of the same sweep in one process: wherever each run trains, however often it moves,
after an executor is killed, with IC Ops; DPO too; ASHA decides as on one device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rapidfire_core import Experiment, cli
from rapidfire_core.automl import (
    List,
    RFGridSearch,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
    RFSuccessiveHalving,
)
from rapidfire_core.cluster.parallel_rounds import parallel_rounds
from rapidfire_core.cluster.placement import RotatingPlacement
from rapidfire_core.demo.data import formatting_function, preference_dataset, support_dataset
from tests.cluster import sweeps
from tests.small_configs import dpo_two_betas

# Nine sweeps on a session-wide local Ray (2 CPUs): a few minutes on the 2-core CI machine.
pytestmark = pytest.mark.slow


def _one_process(root, name, group, **kwargs) -> dict:
    exp = sweeps.fit(root, name, group, **kwargs)
    try:
        return sweeps.outcome(exp)
    finally:
        exp.end()


@pytest.fixture(scope="module")
def reference_four(tmp_path_factory, tiny_model_dir):
    """`sweeps.sft_four` trained fused in this process (the single-device engine)."""
    root = tmp_path_factory.mktemp("one-process")
    return _one_process(root, "four", sweeps.sft_four(tiny_model_dir), execution="fused")


def _runs_json(exp, capsys) -> dict:
    """What `rapidfire runs EXP --json` shows of the experiment."""
    capsys.readouterr()
    assert cli.main(["runs", str(exp.path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_four_run_sweep_on_two_executors_equals_one_process(
    local_ray, tmp_path, tiny_model_dir, reference_four, capsys
):
    # The runs may fuse: each executor holds two and trains them as a fused cohort.
    exp = sweeps.fit(tmp_path, "four-ray", sweeps.sft_four(tiny_model_dir), num_gpus=2, execution="fused")
    try:
        assert exp.controller.fused_steps >= 6  # each cohort's steps fused its two runs
        assert all(e.busy_seconds > 0 and len(e.held) == 2 for e in exp.controller.executors)
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_four)
        sweeps.assert_mlflow_once(exp)
        # Where each run trained, each executor's busy share: `rapidfire runs` (and the dashboard).
        shown = _runs_json(exp, capsys)
        assert [e["index"] for e in shown["executors"]] == [0, 1]
        assert all(e["alive"] and 0 < e["busy_share"] <= 1 for e in shown["executors"])
        where = [r["where"] for r in shown["runs"]]
        assert all(w and w.endswith(("#0", "#1")) for w in where) and len({w[-2:] for w in where}) == 2
    finally:
        exp.end()


@pytest.fixture(scope="module")
def reference_two(tmp_path_factory, tiny_model_dir):
    """`sweeps.sft_two` trained time-sliced in this process."""
    return _one_process(tmp_path_factory.mktemp("one-process"), "two", sweeps.sft_two(tiny_model_dir))


def test_runs_moved_at_every_chunk_give_the_same_numbers(local_ray, tmp_path, tiny_model_dir, reference_two):
    exp = Experiment("rotating", experiment_path=tmp_path, verbose=False, num_gpus=2)
    try:
        exp.controller.round_loop = loop = parallel_rounds(RotatingPlacement())
        exp.run_fit(sweeps.sft_two(tiny_model_dir), sweeps.create_model, sweeps.train_rows(),
                    num_chunks=sweeps.NUM_CHUNKS, seed=sweeps.SEED, execution="sliced")  # fmt: skip
        # 6 steps of 2 rows over chunks of 4 rows: 3 chunks each; both runs move before each.
        assert loop.last.moves == 6
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_two)
        sweeps.assert_mlflow_once(exp)
    finally:
        exp.end()


def test_an_executor_killed_mid_chunk_fails_no_run(
    local_ray, tmp_path, tiny_model_dir, reference_two, capsys
):
    gate = str(tmp_path / "release")
    group = sweeps.sft_two(tiny_model_dir, callbacks=[sweeps.StepGate(gate, step=3)])
    exp, handle = sweeps.fit(tmp_path, "killed", group, num_gpus=2, background=True)
    try:
        # Step 3 is inside chunk 2 (2 steps a chunk): run 1 stands there, its chunk 1 checkpointed.
        reached = tmp_path / "release.0.001.reached"
        deadline = time.monotonic() + 300
        while not reached.exists():
            assert time.monotonic() < deadline, "run 1 never reached step 3"
            time.sleep(0.1)
        doomed = next(e for e in exp.controller.executors if 1 in e.held)
        os.kill(doomed.where["pid"], signal.SIGKILL)
        (tmp_path / "release").touch()
        assert handle.wait(timeout=300)
        assert doomed not in exp.controller.executors and len(exp.controller.executors) == 1
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_two)  # each step once, exact
        sweeps.assert_mlflow_once(exp)
        shown = _runs_json(exp, capsys)
        assert [e["alive"] for e in shown["executors"]] == [doomed.index != 0, doomed.index != 1]
        survivor = f"#{1 - doomed.index}"
        assert all(r["where"].endswith(survivor) for r in shown["runs"])  # both finished there
    finally:
        (tmp_path / "release").touch()
        exp.end()


def test_stop_and_resume_of_a_run_on_an_executor_change_no_number(
    local_ray, tmp_path, tiny_model_dir, reference_two
):
    # Both runs stand inside chunk 2 (after step 3) when the stop is sent; run 1 then waits after
    # its step 5 until the resume is sent, so the sweep is still training when it arrives.
    inside, later = tmp_path / "inside", tmp_path / "later"
    gates = [sweeps.StepGate(str(inside), step=3), sweeps.StepGate(str(later), step=5)]
    exp, handle = sweeps.fit(tmp_path, "steered", sweeps.sft_two(tiny_model_dir, callbacks=gates),
                             num_gpus=2, background=True)  # fmt: skip
    try:
        sweeps.wait_for_file(tmp_path / "inside.0.001.reached")
        sweeps.wait_for_file(tmp_path / "inside.0.0005.reached")
        stop = exp.stop_run(2)
        inside.touch()
        assert exp.wait_for(stop, timeout=300).status == "applied"
        assert exp.get_runs_info().set_index("run_id").loc[2, "status"] == "STOPPED"
        resume = exp.resume_run(2)
        time.sleep(3)  # the controller notices it (within 0.5 s) while run 1 waits at its step 5
        later.touch()
        assert exp.wait_for(resume, timeout=300).status == "applied"
        assert handle.wait(timeout=300)
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_two)
        sweeps.assert_mlflow_once(exp)
    finally:
        inside.touch()
        later.touch()
        exp.end()


def test_dpo_sweep_on_two_executors_equals_one_process(local_ray, tmp_path, tiny_model_dir):
    def dpo(num_gpus):
        group = RFGridSearch(dpo_two_betas(tiny_model_dir), trainer_type="DPO")
        train = preference_dataset(n=8, seed=4)
        return sweeps.fit(tmp_path, f"dpo-{num_gpus}", group, num_gpus=num_gpus, train=train)

    one = dpo(None)
    reference = sweeps.outcome(one)
    one.end()
    exp = dpo(2)
    try:
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference)
    finally:
        exp.end()


def test_asha_on_two_executors_stops_the_bad_runs(local_ray, tmp_path, tiny_model_dir):
    # Learning rates 1e-7 and 1e-8 barely move the eval loss: the rung after chunk 1 stops them.
    config = RFModelConfig(
        model_name=tiny_model_dir,
        peft_config=RFLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        training_args=RFSFTConfig(learning_rate=List([1e-7, 5e-3, 1e-8, 3e-3]), per_device_train_batch_size=2,
                                  max_length=64, max_steps=8, logging_steps=1),
        formatting_func=formatting_function,
    )  # fmt: skip
    search = RFSuccessiveHalving(config, trainer_type="SFT", objective="minimize:eval_loss", max_rungs=1)
    exp = Experiment("asha", experiment_path=tmp_path, verbose=False, num_gpus=2)
    try:
        exp.run_fit(search, sweeps.create_model, support_dataset(n=16, seed=3), support_dataset(n=4, seed=9),
                    num_chunks=4)  # fmt: skip
        info = exp.get_runs_info().set_index("run_id")
        assert info["status"].to_dict() == {1: "STOPPED", 2: "COMPLETED", 3: "STOPPED", 4: "COMPLETED"}
        assert info.loc[[1, 3], "global_step"].tolist() == [2, 2]  # stopped right after chunk 1
    finally:
        exp.end()


def test_warm_clone_and_delete_of_runs_on_executors(local_ray, tmp_path, tiny_model_dir, reference_two):
    # Both runs stand inside chunk 2 (after step 3): run 1 is cloned warm, run 2 deleted.
    inside = tmp_path / "inside"
    group = sweeps.sft_two(tiny_model_dir, callbacks=[sweeps.StepGate(str(inside), step=3)])
    exp, handle = sweeps.fit(tmp_path, "clone", group, num_gpus=2, background=True)
    try:
        sweeps.wait_for_file(tmp_path / "inside.0.001.reached")
        sweeps.wait_for_file(tmp_path / "inside.0.0005.reached")
        clone = exp.clone_run(1, {"learning_rate": 2e-4}, warm_start=True)
        delete = exp.delete_run(2)
        inside.touch()
        cloned = exp.wait_for(clone, timeout=300)
        assert cloned.status == "applied", cloned.error
        assert exp.wait_for(delete, timeout=300).status == "applied"
        assert handle.wait(timeout=300)
        info = exp.get_runs_info().set_index("run_id")
        assert info["status"].to_dict() == {1: "COMPLETED", 2: "DELETED", 3: "COMPLETED"}
        assert cloned.result["layers_copied"] > 0 and cloned.result["start_position"] > 0
        mine = sweeps.outcome(exp)
        sweeps.assert_same_numbers({1: mine[1]}, {1: reference_two[1]})  # the parent is undisturbed
        # The warm clone went on from the parent's step 3 for the rest of its 6 steps, each once.
        assert mine[3]["steps"] == sorted(set(mine[3]["steps"])) and len(mine[3]["losses"]) == 6
    finally:
        inside.touch()
        exp.end()


def test_a_node_removed_mid_sweep_fails_no_run(local_ray, tmp_path, tiny_model_dir, reference_two):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster.sweeps", "node-loss", str(tmp_path), tiny_model_dir],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["executors"] == 1  # the worker node's executor was lost; the head's finished both
    outcome = {int(run_id): run for run_id, run in result["outcome"].items()}
    sweeps.assert_same_numbers(outcome, reference_two)


def test_a_cancelled_fit_on_executors_continues_exactly_in_the_next_run_fit(
    local_ray, tmp_path, tiny_model_dir, reference_two
):
    # Cancelled while both runs stand inside chunk 2: they stop where their chunk 1 checkpoint is,
    # and run_fit with the same arguments continues them from it (crash-resume's path).
    inside = tmp_path / "inside"
    group = sweeps.sft_two(tiny_model_dir, callbacks=[sweeps.StepGate(str(inside), step=3)])
    exp, handle = sweeps.fit(tmp_path, "cancelled", group, num_gpus=2, background=True)
    try:
        sweeps.wait_for_file(tmp_path / "inside.0.001.reached")
        sweeps.wait_for_file(tmp_path / "inside.0.0005.reached")
        handle.cancel()
        inside.touch()
        assert handle.wait(timeout=300, raise_errors=False)
        assert set(exp.get_runs_info()["status"]) == {"STOPPED"}
        exp.run_fit(group, sweeps.create_model, sweeps.train_rows(), num_chunks=sweeps.NUM_CHUNKS,
                    seed=sweeps.SEED, execution="sliced")  # fmt: skip
        sweeps.assert_same_numbers(sweeps.outcome(exp), reference_two)
        sweeps.assert_mlflow_once(exp)
    finally:
        inside.touch()
        exp.end()
