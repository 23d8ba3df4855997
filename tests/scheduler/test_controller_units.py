"""The run controller driven by a fake executor: placement, turns, commands and every status
change, without training (each test runs in milliseconds once the package is imported)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.control import CommandStore, IllegalTransition, RunStatus, RunStore
from rapidfire_core.scheduler.chunks import ChunkPlan
from rapidfire_core.scheduler.controller import RunController
from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.scheduler.run import FitData
from rapidfire_core.trainers.datasets import FormattedDatasets
from rapidfire_core.trainers.shared_models import ModelRegistry
from tests.scheduler.fake_executor import FakeExecutor, FakeTracker


def _specs(n: int, lora: bool = True):
    rates = [10.0 ** -(i + 3) for i in range(n)]
    config = RFModelConfig(
        model_name="unused-by-the-fake",
        peft_config=RFLoraConfig(r=4, target_modules=["q_proj"]) if lora else None,
        training_args=RFSFTConfig(learning_rate=List(rates) if n > 1 else rates[0], max_steps=4),
    )
    return RFGridSearch(config, trainer_type="SFT").expand()


def _fit_data() -> FitData:
    rows = Dataset.from_list([{"text": f"row {i}"} for i in range(8)])

    def never_called(model_config):
        raise AssertionError("a fake executor builds no model")

    return FitData(
        "SFT", ChunkPlan(8, 2, 0), rows, None, FormattedDatasets("SFT"), ModelRegistry(never_called), 2
    )


class Sweep:
    """A controller over fresh stores, a fake tracker and fake executors."""

    def __init__(self, tmp_path, executors=None, placer=None) -> None:
        self.store = RunStore(tmp_path / "runs.db")
        self.commands = CommandStore(tmp_path / "runs.db")
        self.tracker = FakeTracker()
        self.executors = executors or [FakeExecutor()]
        extra = {"placer": placer} if placer is not None else {}
        self.controller = RunController(
            tmp_path, self.store, self.commands, self.tracker, lambda text: None, self.executors, **extra
        )
        self.data = _fit_data()

    def add(self, n: int, lora: bool = True) -> list[int]:
        self.controller.start_sweep()
        return self.controller.add_runs(_specs(n, lora), self.data)

    def train(self, state_budget=None) -> None:
        self.controller.take_ownership()
        try:
            self.controller.run(state_budget, ProgressDisplay([], enabled=False))
        finally:
            self.controller.give_up_ownership()

    def statuses(self) -> list[str]:
        return [run["status"] for run in self.store.runs()]

    def tracking(self) -> list[str]:
        return [self.tracker.status[run["mlflow_run_id"]] for run in self.store.runs()]


def test_runs_take_one_chunk_each_per_round_and_complete(tmp_path):
    sweep = Sweep(tmp_path)
    assert sweep.add(3) == [1, 2, 3]
    sweep.train(state_budget=1024)
    fake = sweep.executors[0]
    turns = [call[1:] for call in fake.calls if call[0] == "turn"]
    assert turns == [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]  # chunk rounds, run-id order
    assert ("start_fit", 1024) in fake.calls and fake.calls[-1] == ("end_fit",)
    assert sweep.statuses() == ["COMPLETED"] * 3 and sweep.tracking() == ["FINISHED"] * 3
    assert [(r["chunks_done"], r["global_step"]) for r in sweep.store.runs()] == [(2, 4)] * 3
    expected = [
        (step, {"loss": 1.0 / step, "chunk": chunk}) for step, chunk in ((1, 1), (2, 1), (3, 2), (4, 2))
    ]
    assert sweep.store.metric_steps(2) == expected
    assert sweep.tracker.metrics["run-2"] == [1, 2, 3, 4]  # each step once, after the run ended


def test_placement_spreads_runs_and_each_trains_on_its_executor(tmp_path):
    executors = [FakeExecutor("a"), FakeExecutor("b")]
    counter = iter(range(100))

    def round_robin(executors, spec):
        return executors[next(counter) % len(executors)]

    sweep = Sweep(tmp_path, executors, round_robin)
    sweep.add(4)
    sweep.train()
    for executor, mine in zip(executors, ([1, 3], [2, 4]), strict=True):
        assert [c[1] for c in executor.calls if c[0] == "place"] == mine
        assert sorted({c[1] for c in executor.calls if c[0] == "turn"}) == mine
    assert sweep.statuses() == ["COMPLETED"] * 4


@pytest.mark.parametrize("returns_for_commands", [False, True], ids=["applies-in-turn", "returns-for-them"])
def test_a_stop_parks_the_run_at_its_next_step_and_a_resume_finishes_it(tmp_path, returns_for_commands):
    sweep = Sweep(tmp_path)
    sweep.add(2)
    fake = sweep.executors[0]
    fake.returns_for_commands = returns_for_commands  # a remote executor may end the turn instead
    stops = []

    def stop_run_1_after_its_first_step(run):
        if run.run_id == 1 and run.global_step == 1 and not stops:
            stops.append(sweep.commands.submit("stop", 1))

    fake.on_step = stop_run_1_after_its_first_step
    sweep.train()
    assert sweep.commands.get(stops[0].command_id).result == {"status": "STOPPED", "global_step": 1}
    assert ("capture", 1) in fake.calls and ("park", 1) in fake.calls  # state persisted, then parked
    assert sweep.statuses() == ["STOPPED", "COMPLETED"] and sweep.tracking() == ["KILLED", "FINISHED"]
    assert sweep.store.get_run(1)["global_step"] == 1 and not sweep.store.get_run(1)["interrupted"]

    sweep.commands.submit("resume", 1)
    sweep.train()
    assert ("unpark", 1) in fake.calls
    assert sweep.statuses() == ["COMPLETED", "COMPLETED"] and sweep.tracking() == ["FINISHED", "FINISHED"]
    assert [step for step, _ in sweep.store.metric_steps(1)] == [1, 2, 3, 4]  # continued where it stopped


def test_a_deleted_run_leaves_its_executor_and_its_tracking_run_ends_before_it_is_deleted(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(2)
    fake = sweep.executors[0]
    fake.on_step = lambda run: run.run_id == 2 and run.global_step == 1 and sweep.commands.submit("delete", 2)
    sweep.train()
    assert ("remove", 2) in fake.calls and not fake.holds(2)
    assert sweep.statuses() == ["COMPLETED", "DELETED"]
    assert sweep.tracking() == ["FINISHED", "KILLED"] and sweep.tracker.deleted == {"run-2"}


def test_a_cohort_trains_on_when_its_lowest_member_is_deleted(tmp_path):
    fake = FakeExecutor(num_chunks=3)
    fake.cohort = True
    sweep = Sweep(tmp_path, [fake])
    sweep.add(3)
    fake.on_step = lambda run: run.run_id == 1 and run.global_step == 1 and sweep.commands.submit("delete", 1)
    sweep.train()
    assert sweep.statuses() == ["DELETED", "COMPLETED", "COMPLETED"]
    assert [c[1:] for c in fake.calls if c[0] == "turn" and c[1] != 1] == [
        (2, 1), (3, 1), (2, 2), (3, 2), (2, 3), (3, 3)
    ]  # fmt: skip


def test_a_failing_run_and_an_unbuildable_one_fail_alone_with_their_reason(tmp_path):
    fake = FakeExecutor()
    fake.fail_at[2] = 2  # raises in its second chunk
    fake.unbuildable.add(3)
    sweep = Sweep(tmp_path, [fake])
    sweep.add(3)
    sweep.train()
    runs = sweep.store.runs()
    assert sweep.statuses() == ["COMPLETED", "FAILED", "FAILED"]
    assert sweep.tracking() == ["FINISHED", "FAILED", "FAILED"]
    assert runs[1]["error"] == "RuntimeError: run 2 blew up" and runs[1]["global_step"] == 2
    assert runs[2]["error"] == "ValueError: run 3 cannot be built"
    assert [c for c in fake.calls if c[0] == "turn" and c[1] in (2, 3)] == [("turn", 2, 1), ("turn", 2, 2)]


def test_commands_that_make_no_sense_fail_with_the_reason_and_change_nothing(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(1, lora=False)
    submitted = [
        sweep.commands.submit("resume", 1),
        sweep.commands.submit("stop", 7),
        sweep.commands.submit("clone", 1, {"changes": {}, "warm_start": True}),
        sweep.commands.submit("clone", 1, {"changes": {"no_such_knob": 1}, "warm_start": False}),
    ]
    sweep.train()
    errors = [sweep.commands.get(c.command_id).error for c in submitted]
    assert errors[0] == "run 1 is NEW: only a STOPPED run can be resumed"
    assert errors[1] == "no run with id 7"
    assert errors[2] == "run 1 trains without a LoRA adapter: warm start needs one"
    assert "no_such_knob" in errors[3]
    assert sweep.statuses() == ["COMPLETED"]  # no run was made by the failed clones
    stop_late = sweep.commands.submit("stop", 1)
    sweep.train()
    assert sweep.commands.get(stop_late.command_id).error == (
        "run 1 is COMPLETED: only a NEW or ONGOING run can be stopped"
    )


def test_a_clone_is_placed_and_trains_beside_its_parent(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(1)
    fake = sweep.executors[0]
    clone = sweep.commands.submit("clone", 1, {"changes": {"learning_rate": 0.5}, "warm_start": True})
    sweep.train()
    assert sweep.commands.get(clone.command_id).result["run_id"] == 2
    assert ("warm_start_from", 1) in fake.calls and ("place", 2, False, True) in fake.calls
    assert sweep.statuses() == ["COMPLETED", "COMPLETED"]
    child = sweep.store.get_run(2)
    assert child["parent_run_id"] == 1 and child["warm_start"]


def test_an_interrupt_stops_the_runs_in_flight_resumably(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(2)

    def interrupt(run):
        if run.run_id == 2:
            raise KeyboardInterrupt

    sweep.executors[0].on_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        sweep.train()
    runs = sweep.store.runs()
    assert sweep.statuses() == ["STOPPED", "STOPPED"] and all(r["interrupted"] for r in runs)
    assert {r["error"] for r in runs} == {"run_fit was interrupted"}
    assert sweep.tracking() == ["KILLED", "KILLED"]
    assert not sweep.controller.lease.held


def test_training_needs_the_owner_lease(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(1)
    with pytest.raises(RuntimeError, match="owner lease"):
        sweep.controller.run(None, ProgressDisplay([], enabled=False))


def test_taking_ownership_settles_what_a_dead_owner_left(tmp_path):
    sweep = Sweep(tmp_path)
    orphan = sweep.store.create_run("run", "SFT", {})
    mlflow_id = sweep.tracker.start_run("orphan", {})
    sweep.store.update_run(orphan, status=RunStatus.ONGOING, mlflow_run_id=mlflow_id)
    claimed = sweep.commands.submit("stop", orphan)
    assert sweep.commands.claim(claimed.command_id)  # the dead owner was applying it
    sweep.controller.take_ownership()
    sweep.controller.give_up_ownership()
    run = sweep.store.get_run(orphan)
    assert (run["status"], run["interrupted"], sweep.tracker.status[mlflow_id]) == ("STOPPED", 1, "KILLED")
    assert sweep.commands.get(claimed.command_id).status == "failed"


def test_an_illegal_status_change_changes_nothing(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.add(1)
    sweep.train()
    with pytest.raises(IllegalTransition):
        sweep.controller.lifecycle.set(1, RunStatus.ONGOING)
    assert sweep.statuses() == ["COMPLETED"] and sweep.tracking() == ["FINISHED"]
    assert sweep.controller.lifecycle.status(1) is RunStatus.COMPLETED


def test_a_moved_run_is_removed_from_its_executor_and_placed_on_the_other(tmp_path):
    first, second = FakeExecutor("first"), FakeExecutor("second")
    sweep = Sweep(tmp_path, executors=[first, second])
    sweep.add(2)  # the default placement: both on the first
    sweep.controller.move(2, second)
    assert ("remove", 2) in first.calls and ("place", 2, False, False) in second.calls
    assert sweep.controller.runs_on(first) == [1] and sweep.controller.runs_on(second) == [2]
    sweep.train()
    assert sweep.statuses() == ["COMPLETED", "COMPLETED"]
    assert [c[1:] for c in second.calls if c[0] == "turn"] == [(2, 1), (2, 2)]


def test_the_runs_of_a_lost_executor_continue_on_the_others(tmp_path):
    first, second = FakeExecutor("first"), FakeExecutor("second")
    sweep = Sweep(tmp_path, executors=[first, second])
    sweep.add(2)
    sweep.controller.executor_lost(first)  # never called again: it is gone
    assert sweep.controller.executors == [second] and ("remove", 1) not in first.calls
    assert sweep.controller.runs_on(second) == [1, 2]
    sweep.train()
    assert sweep.statuses() == ["COMPLETED", "COMPLETED"]
    with pytest.raises(RuntimeError, match="every executor was lost"):
        sweep.controller.executor_lost(second)
