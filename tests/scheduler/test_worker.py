"""Turn-taking between the scheduler and run threads."""

from rapidfire_core.scheduler.worker import RunWorker


def test_turns_interleave_in_scheduler_order():
    trace = []
    workers = {}

    def make(name):
        def body():
            for step in range(3):
                trace.append((name, step))
                workers[name].pause()

        return body

    for name in ("a", "b"):
        workers[name] = RunWorker(name, make(name))
    for _ in range(4):
        for name in ("a", "b"):
            workers[name].run_turn()
    assert trace == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert all(w.finished and w.error is None for w in workers.values())


def test_an_exception_in_a_run_is_captured_not_raised():
    def body():
        raise ValueError("boom")

    worker = RunWorker("x", body)
    worker.run_turn()
    assert worker.finished
    assert isinstance(worker.error, ValueError)
    assert "boom" in worker.error_traceback


def test_abort_unwinds_a_paused_run():
    reached_end = []
    holder = {}

    def body():
        holder["w"].pause()
        reached_end.append(True)

    holder["w"] = worker = RunWorker("y", body)
    worker.run_turn()
    assert not worker.finished
    worker.abort()
    assert worker.finished and worker.error is None
    assert reached_end == []
