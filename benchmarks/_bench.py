"""The timing harness of the PowerFlow benchmarks: one worker process per arm, interleaved step by step.

How one comparison ("group") is timed
-------------------------------------
Every arm (PowerFlow, GRPO beta>0, GRPO beta=0, ...) trains in its own fresh Python process, so that its peak RSS
(`VmHWM`) is its own. The parent process interleaves the arms *step by step*: each child blocks at the start of every
optimiser step until the parent says "go"; the parent lets exactly one child run at a time, in the order
A, B, C, then B, C, A, then C, A, B, ... (rotated each round). So the arms see the same machine state, and per-round
ratios t_A / t_B compare steps that ran seconds apart. The first `warmup` rounds are dropped.

Timed region of one step: `on_step_begin` -> `on_step_end` of a `TrainerCallback`, i.e. generation, the extra
no-grad forwards (base/reference/old policy), rewards, the loss forward, backward, clipping, optimiser and scheduler
step. Logging (`logging_steps` is set past the end of the run) and data loading of the prompts are outside. The cyclic
GC is frozen after start-up and disabled during a step; it runs between steps, outside the timed region.

Within the timed region, a few trainer methods are wrapped (on the instance, not in the package) with a clock to
split the step into generation / base forward / old-policy forward / rewards / policy forward / head / TB metrics /
backward / optimiser / other. Wrapping costs two `perf_counter` calls per call (a handful per step).

Two parents: `run_group` runs a fixed number of rounds (`step_cost`, `waste`); `run_until` runs whole rounds until a
deadline (`gpu_step_cost`), its children writing their record after every step. A child is
`python -m benchmarks._bench SPEC_JSON`, started in the repository root.
"""

import gc
import json
import os
import select
import subprocess
import sys
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONWARNINGS": "ignore",
}

# Split categories, in display order.
SPLIT_KEYS = (
    "generate",
    "base_forward",
    "old_forward",
    "rewards",
    "policy_forward",
    "head",
    "tb_metrics",
    "backward",
    "optimizer",
    "other",
)
# The per-step lists of a worker's record.
STEP_KEYS = ("step_time", "cpu_time", "split", "completion_tokens", "completion_min_length", "completion_max_length")


def set_single_thread():
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(1)
    return torch


def resolve_device(device, torch):
    """`device`, with "auto" read as cuda when torch sees a GPU, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ------------------------------------------------------------------------------------------------------ the worker
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def install_sync_counter():
    """Count calls that read a tensor's value on the host (`.item()`, `.tolist()`, `.cpu()`, `bool(t)`, ...) by call
    site. On an accelerator each such call on a device tensor is a host/device synchronisation; on this CPU-only
    machine we can only count them (whether the tensor would be on the device is read from the code)."""
    import collections

    import torch

    counts = collections.Counter()
    state = {"on": False}

    def site(frame):
        path = frame.f_code.co_filename.replace(os.sep, "/")
        for package in ("trl_powerflow", "trl", "transformers", "accelerate", "torch", "benchmarks"):
            marker = f"/{package}/"
            if marker in path:
                rel = path.split(marker, 1)[1]
                return f"{package}/{rel}:{frame.f_code.co_name}"
        return f"other:{frame.f_code.co_name}"

    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            if state["on"]:
                counts[f"{_name} @ {site(sys._getframe(1))}"] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, wrapper)
    return counts, state


def _read_rss_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _Splitter:
    """Per-step clock of the trainer's phases, by wrapping a few bound methods of one trainer instance."""

    def __init__(self, trainer, sync):
        self.trainer = trainer
        self.sync = sync
        self.current = dict.fromkeys(SPLIT_KEYS, 0.0)
        t = trainer
        self._wrap(t, "_generate", lambda *a, **k: "generate")
        self._wrap(t, "_calculate_rewards", lambda *a, **k: "rewards")
        self._wrap(t, "_get_per_token_logps_and_entropies", self._logps_category)
        if getattr(t, "log_z_head", None) is not None:
            self._wrap(t.log_z_head, "forward", lambda *a, **k: "head")
        if hasattr(t, "_log_tb_metrics"):
            self._wrap(t, "_log_tb_metrics", lambda *a, **k: "tb_metrics")
        self._wrap(t.accelerator, "backward", lambda *a, **k: "backward")
        self._wrap(t, "_clip_grad_norm", lambda *a, **k: "optimizer")

    def _logps_category(self, model, *args, **kwargs):
        import torch

        if model is self.trainer.ref_model:
            return "base_forward"
        if torch.is_grad_enabled():
            return "policy_forward"
        return "old_forward"

    def _wrap(self, obj, name, category):
        if obj is None or not hasattr(obj, name):
            return
        original = getattr(obj, name)
        splitter = self

        def timed(*args, **kwargs):
            key = category(*args, **kwargs)
            splitter.sync()
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                splitter.sync()
                splitter.current[key] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def wrap_optimizer(self):
        # The optimizer is created inside `train()`; wrap its step once it exists.
        opt = self.trainer.optimizer
        if opt is not None and not getattr(opt, "_bench_wrapped", False):
            self._wrap(opt, "step", lambda *a, **k: "optimizer")
            opt._bench_wrapped = True

    def reset(self):
        self.current = dict.fromkeys(SPLIT_KEYS, 0.0)


def run_worker(spec_path):
    """Child process: build one arm, then train it one step per "go" from the parent. With `spec["stream"]` (set by
    `run_until`) the record is written after every step, so that the parent may stop the run after any round."""
    torch = set_single_thread()
    with open(spec_path) as f:
        spec = json.load(f)
    go_fd, ready_fd = spec["fds"]
    cuda = spec.get("device", "cpu") == "cuda"
    stream = spec.get("stream", False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from transformers import TrainerCallback

    from benchmarks._arms import build_trainer

    record = {key: [] for key in STEP_KEYS}
    sync_counts, sync_state = install_sync_counter() if spec.get("count_syncs") else (None, {})

    def write_record():
        record["peak_rss_kb"] = _read_rss_kb("VmHWM")
        if cuda:
            record["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
            record["cuda_reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
        tmp = spec["result_path"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, spec["result_path"])

    class Baton(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            splitter.wrap_optimizer()
            gc.collect()
            gc.freeze()
            if spec.get("pin_cpu") is not None and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {int(spec["pin_cpu"])})

        def on_step_begin(self, args, state, control, **kwargs):
            os.write(ready_fd, b"r")
            if os.read(go_fd, 1) != b"g":  # the parent stopped the run (or is gone)
                sys.stdout.flush()
                os._exit(0)  # with `stream`, the record of the last step is on disk
            gc.disable()
            splitter.reset()
            sync()
            if spec.get("count_syncs") and state.global_step >= spec["warmup"]:
                sync_state["on"] = True
            self.c0 = time.process_time()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            elapsed = time.perf_counter() - self.t0
            record["cpu_time"].append(time.process_time() - self.c0)
            sync_state["on"] = False
            gc.enable()
            split = dict(splitter.current)
            split["other"] = max(0.0, elapsed - sum(v for k, v in split.items() if k != "other"))
            record["step_time"].append(elapsed)
            record["split"].append(split)
            metrics = trainer._metrics["train"]
            nan = [float("nan")]
            record["completion_tokens"].append(
                (metrics.get("completions/mean_length") or nan)[-1] * args.per_device_train_batch_size
            )
            record["completion_min_length"].append((metrics.get("completions/min_length") or nan)[-1])
            record["completion_max_length"].append((metrics.get("completions/max_length") or nan)[-1])
            if stream:
                write_record()
            gc.collect()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(spec, [Baton()], os.path.join(spec["work_dir"], "out", spec["name"]))
    splitter = _Splitter(trainer, sync)
    record["cuda_after_init_bytes"] = torch.cuda.memory_allocated() if cuda else None
    trainer.train()
    if sync_counts is not None:
        record["sync_counts_per_step"] = {k: v / max(spec["steps"], 1) for k, v in sorted(sync_counts.items())}
    write_record()
    os.write(ready_fd, b"r")  # final: the run is over and the result is written


# ------------------------------------------------------------------------------------------------------ the parent
class WorkerError(RuntimeError):
    pass


class _Arms:
    """One worker process per spec (list of dicts with a unique "name"), each blocked at its next step until "go"."""

    def __init__(self, specs, work_dir, timeout, stream=False):
        os.makedirs(work_dir, exist_ok=True)
        self.timeout = timeout
        self.procs = []
        env = dict(os.environ)
        env.update(CHILD_ENV)
        env["PYTHONPATH"] = os.pathsep.join([REPO_DIR, env.get("PYTHONPATH", "")])
        try:
            for spec in specs:
                self._start(dict(spec), work_dir, env, stream)
        except BaseException:
            self.close(grace=0)
            raise

    def _start(self, spec, work_dir, env, stream):
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        spec.update(fds=[go_r, ready_w], work_dir=work_dir, stream=stream)
        spec["result_path"] = os.path.join(work_dir, f"{spec['name']}.result.json")
        spec_path = os.path.join(work_dir, f"{spec['name']}.spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        log_path = os.path.join(work_dir, f"{spec['name']}.log")
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._bench", spec_path],
            pass_fds=(go_r, ready_w),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_DIR,
        )
        os.close(go_r)
        os.close(ready_w)
        self.procs.append({"spec": spec, "proc": proc, "go": go_w, "ready": ready_r, "log": log, "log_path": log_path})

    def wait_ready(self, p):
        ready, _, _ = select.select([p["ready"]], [], [], self.timeout)
        if not ready:
            raise WorkerError(f"{p['spec']['name']}: no answer within {self.timeout} s\n{_tail(p['log_path'])}")
        if os.read(p["ready"], 1) != b"r":
            p["proc"].wait()
            raise WorkerError(f"{p['spec']['name']} exited with code {p['proc'].returncode}\n{_tail(p['log_path'])}")

    def start_up(self):
        for p in self.procs:  # start-up (imports, model loading) runs concurrently and is not timed
            self.wait_ready(p)

    def run_round(self, k):
        """One step of every arm, one at a time, the order rotated by `k`."""
        shift = k % len(self.procs)
        for p in self.procs[shift:] + self.procs[:shift]:
            os.write(p["go"], b"g")
            self.wait_ready(p)  # the next "ready" comes when this arm reaches its next step (or finishes)

    def close(self, grace):
        """Close the pipes (a child waiting for "go" reads EOF and exits); kill what is left after `grace` s."""
        for p in self.procs:
            for fd in (p["go"], p["ready"]):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for p in self.procs:
            try:
                p["proc"].wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p["proc"].kill()
                p["proc"].wait()
            p["log"].close()


def run_group(specs, work_dir, rotation_offset=0, timeout=900, verbose=True):
    """Run the arms of `specs` (list of dicts with a unique "name") interleaved step by step; one process each.

    Returns {name: record} with per-step times, splits, tokens and peak memory of each arm.
    """
    arms = _Arms(specs, work_dir, timeout)
    try:
        arms.start_up()
        n_rounds = specs[0]["warmup"] + specs[0]["steps"]
        for k in range(n_rounds):
            arms.run_round(k + rotation_offset)
            if verbose:
                print(f"    round {k + 1}/{n_rounds}", end="\r", file=sys.stderr, flush=True)
        results = {}
        for p in arms.procs:
            p["proc"].wait(timeout=timeout)
            if p["proc"].returncode != 0:
                raise WorkerError(f"{p['spec']['name']} failed\n{_tail(p['log_path'])}")
            with open(p["spec"]["result_path"]) as f:
                results[p["spec"]["name"]] = json.load(f)
        return results
    finally:
        arms.close(grace=0)


def run_until(specs, work_dir, deadline, max_rounds, warmup, grace=30.0, timeout=900):
    """Start one process per spec, then run whole rounds (one step of every arm, rotated order) until `max_rounds`
    or until the next round would end past `deadline` (time.monotonic(); `grace` s past it for the first timed
    round). Returns ({name: record or None}, rounds, notes); every record keeps the same rounds."""
    notes = []
    arms = _Arms(specs, work_dir, timeout, stream=True)
    try:
        t0 = time.monotonic()
        arms.start_up()
        notes.append(f"start-up of {len(arms.procs)} arms: {time.monotonic() - t0:.1f} s")
        rounds, round_times = 0, []
        while rounds < max_rounds:
            if round_times:
                # Until one timed round is in, a round may end up to `grace` s past the deadline.
                estimate = max(round_times[-2:])
                limit = deadline + (grace if rounds < warmup + 1 else 0.0)
                if time.monotonic() + estimate > limit:
                    notes.append(
                        f"stopped after {rounds} rounds: the next (~{estimate:.0f} s) would pass the deadline"
                    )
                    break
            t_round = time.monotonic()
            arms.run_round(rounds)
            round_times.append(time.monotonic() - t_round)
            rounds += 1
            print(f"    round {rounds}/{max_rounds}: {round_times[-1]:.1f} s", file=sys.stderr, flush=True)
        notes.append(f"round wall times (s): {[round(t, 2) for t in round_times]}")
    finally:
        arms.close(grace=60)
    results = {}
    for p in arms.procs:
        try:
            with open(p["spec"]["result_path"]) as f:
                results[p["spec"]["name"]] = json.load(f)
        except (OSError, ValueError):
            results[p["spec"]["name"]] = None
    n = min((len(r["step_time"]) for r in results.values() if r), default=0)
    for r in results.values():  # every arm keeps the same rounds (a child may have written one step more)
        if r:
            for key in STEP_KEYS:
                r[key] = r[key][:n]
    return results, n, notes


def _tail(path, n=40):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


if __name__ == "__main__":
    run_worker(sys.argv[1])
