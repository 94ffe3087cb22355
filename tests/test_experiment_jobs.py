"""`small_scale.run_jobs`, the scheduler behind `trl-powerflow experiment --jobs N`: never more than N jobs at once,
a job starts only after every job of the stages it waits for, seconds are summed per stage, and the first failure
stops new starts and is raised. Jobs here are in-process callables (the experiment's own jobs are subprocesses and
are exercised end to end by tests/test_experiment_pipeline.py)."""

import threading
import time

import pytest

from trl_powerflow.experiments.small_scale import Job, run_jobs


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.events = []  # (name, "start" | "end", time)

    def job(self, stage, name, seconds=0.05, after=(), cost=1.0, fail=False):
        def body():
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.events.append((name, "start", time.monotonic()))
            time.sleep(seconds)
            with self.lock:
                self.running -= 1
                self.events.append((name, "end", time.monotonic()))
            if fail:
                raise RuntimeError(f"{name} failed")

        return Job(stage, name, local=body, cost=cost, after=after)

    def time_of(self, name, kind):
        return next(t for n, k, t in self.events if n == name and k == kind)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrency_dependencies_and_seconds(workers):
    rec = Recorder()
    jobs = [
        rec.job("diagnosis", "diagnosis", after=("seeds",), cost=100),  # most costly, yet must wait for the seeds
        rec.job("seeds", "seed0", 0.15, cost=20),
        rec.job("seeds", "seed1", 0.15, cost=20),
        rec.job("seeds", "seed2", 0.15, cost=20),
        rec.job("sweep", "sweep", 0.05, cost=6),
        rec.job("toy", "toy", 0.05, cost=2),
    ]
    seconds = run_jobs(jobs, workers)
    assert rec.most == min(workers, 5)  # 5 jobs can run before diagnosis: the cap is reached and never exceeded
    last_seed = max(rec.time_of(f"seed{i}", "end") for i in range(3))
    assert rec.time_of("diagnosis", "start") >= last_seed
    assert set(seconds) == {"seeds", "diagnosis", "sweep", "toy"}
    assert seconds["seeds"] >= 3 * 0.15  # summed over the stage's three jobs
    assert len([e for e in rec.events if e[1] == "end"]) == len(jobs)


def test_largest_cost_starts_first():
    rec = Recorder()
    run_jobs([rec.job("toy", "small", cost=1), rec.job("seeds", "large", cost=20)], 1)
    assert [n for n, k, _ in rec.events if k == "start"] == ["large", "small"]


def test_failure_is_raised_and_stops_new_starts():
    rec = Recorder()
    jobs = [rec.job("seeds", "bad", cost=20, fail=True), rec.job("toy", "later", cost=1)]
    with pytest.raises(RuntimeError, match="bad failed"):
        run_jobs(jobs, 1)
    assert "later" not in {n for n, _, _ in rec.events}


def test_failure_waits_for_running_jobs():
    rec = Recorder()
    jobs = [rec.job("seeds", "bad", 0.01, cost=20, fail=True), rec.job("sweep", "slow", 0.2, cost=10)]
    with pytest.raises(RuntimeError, match="bad failed"):
        run_jobs(jobs, 2)
    assert ("slow", "end") in {(n, k) for n, k, _ in rec.events}  # the running job finished before the raise
