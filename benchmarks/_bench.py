"""Shared machinery of the PowerFlow benchmarks: environment, arms, interleaved worker processes, statistics.

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
"""

import gc
import json
import math
import os
import platform
import random
import select
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)

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


def set_single_thread():
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(1)
    return torch


# ------------------------------------------------------------------------------------------------- machine and stats
def machine_info():
    from importlib.metadata import version

    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trl": version("trl"),
        "transformers": version("transformers"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": 1,
        "package_commit": package_commit(),
    }
    return info


def package_commit():
    """Commit of the repository the benchmark ran on, with '+dirty' when trl_powerflow/ had local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trl_powerflow"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def median(values):
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def bootstrap_median_ci(values, n_boot=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of the median."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        m = median(values)
        return (m, m)
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(values, k=len(values))) for _ in range(n_boot))
    lo = meds[int((1 - level) / 2 * n_boot)]
    hi = meds[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return (lo, hi)


def ratio_summary(num, den):
    """Median of paired ratios num[k] / den[k] with a bootstrap interval."""
    ratios = [a / b for a, b in zip(num, den) if a is not None and b]
    lo, hi = bootstrap_median_ci(ratios)
    return {"median": median(ratios), "ci95": [lo, hi], "n": len(ratios)}


# --------------------------------------------------------------------------------------------------------- the arms
def cheap_reward(completions, **kwargs):
    """The same cheap reward for every arm that needs one: share of digit characters in the completion."""
    out = []
    for completion in completions:
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(sum(ch.isdigit() for ch in text) / max(len(text), 1))
    return out


ARMS = {
    # name: (trainer, extra config, reward)
    "powerflow": ("powerflow", {}, False),
    "grpo_beta": ("grpo", {"beta": 0.04}, True),
    "grpo_beta0": ("grpo", {"beta": 0.0}, True),
    "powerflow_shaped": ("powerflow", {}, True),
    "powerflow_group": ("powerflow", {"log_z_estimator": "group"}, False),
    "powerflow_la_tb_exact": ("powerflow", {"objective": "la_tb_exact"}, False),
    "powerflow_token_balance": ("powerflow", {"objective": "token_balance"}, False),
    # A/A controls: identical to an arm above, in their own process; their ratio shows the process-to-process noise.
    "grpo_beta_aa": ("grpo", {"beta": 0.04}, True),
    "powerflow_aa": ("powerflow", {}, False),
}

ARM_LABELS = {
    "powerflow": "PowerFlow (label-free, head)",
    "grpo_beta": "GRPO beta=0.04",
    "grpo_beta0": "GRPO beta=0",
    "powerflow_shaped": "PowerFlow + same reward as psi",
    "powerflow_group": "PowerFlow (group log Z)",
    "powerflow_la_tb_exact": "PowerFlow, objective la_tb_exact",
    "powerflow_token_balance": "PowerFlow, objective token_balance (value head)",
    "grpo_beta_aa": "GRPO beta=0.04 (A/A copy)",
    "powerflow_aa": "PowerFlow (A/A copy)",
}


def common_args(spec, output_dir):
    L = spec["completion_length"]
    G = spec["num_generations"]
    batch = spec["prompts_per_step"] * G
    steps = spec["warmup"] + spec["steps"]
    use_cpu = spec.get("device", "cpu") == "cpu"
    return dict(
        output_dir=output_dir,
        max_completion_length=L,
        num_generations=G,
        per_device_train_batch_size=batch,
        generation_kwargs={"min_new_tokens": L},  # every completion has exactly L tokens: same work in every arm
        max_steps=steps,
        logging_steps=steps + 1000,  # no logging inside the timed run
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=use_cpu,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        disable_dropout=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec.get("seed", 0),
    )


def build_trainer(spec, callbacks, output_dir):
    """Build the trainer of one arm (or of a benchmark variant registered in `_variants`)."""
    from trl import GRPOConfig, GRPOTrainer

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    arm = spec["arm"]
    dataset = tiny_prompt_dataset(n=max(64, spec["prompts_per_step"] * (spec["warmup"] + spec["steps"] + 2)))
    args = common_args(spec, output_dir)
    if arm in ARMS:
        kind, extra, with_reward = ARMS[arm]
        trainer_cls = PowerFlowTrainer
    else:
        import _variants

        kind, extra, with_reward, trainer_cls = _variants.VARIANTS[arm]
    args.update(extra)
    args.update(spec.get("config", {}))
    reward = [cheap_reward] if with_reward is True else [with_reward] if callable(with_reward) else None
    if kind == "grpo":
        return GRPOTrainer(
            model=spec["model_dir"],
            reward_funcs=reward,
            args=GRPOConfig(**args),
            train_dataset=dataset,
            callbacks=callbacks,
        )
    return trainer_cls(
        model=spec["model_dir"],
        reward_funcs=reward,
        args=PowerFlowConfig(**args),
        train_dataset=dataset,
        callbacks=callbacks,
    )


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
    """Child process: build one arm, then train it one step per "go" from the parent."""
    torch = set_single_thread()
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, BENCH_DIR)
    go_fd, ready_fd = spec["fds"]
    cuda = spec.get("device", "cpu") == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def signal_ready():
        os.write(ready_fd, b"r")

    def wait_go():
        data = os.read(go_fd, 1)
        if data != b"g":
            raise SystemExit(0)  # parent gone or told us to stop

    from transformers import TrainerCallback

    record = {"step_time": [], "cpu_time": [], "split": [], "completion_tokens": []}
    sync_counts, sync_state = install_sync_counter() if spec.get("count_syncs") else (None, {})

    class Baton(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            splitter.wrap_optimizer()
            gc.collect()
            gc.freeze()
            if spec.get("pin_cpu") is not None and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {int(spec["pin_cpu"])})

        def on_step_begin(self, args, state, control, **kwargs):
            signal_ready()
            wait_go()
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
            lengths = trainer._metrics["train"].get("completions/mean_length") or [float("nan")]
            record["completion_tokens"].append(lengths[-1] * args.per_device_train_batch_size)
            gc.collect()

    output_dir = os.path.join(spec["work_dir"], "out", spec["name"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(spec, [Baton()], output_dir)
    splitter = _Splitter(trainer, sync)
    record["rss_after_init_kb"] = _read_rss_kb("VmRSS")
    trainer.train()
    record["peak_rss_kb"] = _read_rss_kb("VmHWM")
    record["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    if sync_counts is not None:
        record["sync_counts_per_step"] = {k: v / max(spec["steps"], 1) for k, v in sorted(sync_counts.items())}
    with open(spec["result_path"], "w") as f:
        json.dump(record, f)
    signal_ready()  # final: the run is over and the result is written


# ------------------------------------------------------------------------------------------------------ the parent
class WorkerError(RuntimeError):
    pass


def run_group(specs, work_dir, rotation_offset=0, timeout=900, script=None, verbose=True):
    """Run the arms of `specs` (list of dicts with a unique "name") interleaved step by step; one process each.

    Returns {name: record} with per-step times, splits, tokens and peak memory of each arm.
    """
    os.makedirs(work_dir, exist_ok=True)
    script = script or os.path.join(BENCH_DIR, "step_cost.py")
    procs = []
    env = dict(os.environ)
    env.update(CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([BENCH_DIR, REPO_DIR, env.get("PYTHONPATH", "")])
    try:
        for spec in specs:
            go_r, go_w = os.pipe()
            ready_r, ready_w = os.pipe()
            spec = dict(spec)
            spec["fds"] = [go_r, ready_w]
            spec["work_dir"] = work_dir
            spec["result_path"] = os.path.join(work_dir, f"{spec['name']}.result.json")
            spec_path = os.path.join(work_dir, f"{spec['name']}.spec.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            log_path = os.path.join(work_dir, f"{spec['name']}.log")
            log = open(log_path, "w")
            proc = subprocess.Popen(
                [sys.executable, script, "--worker", spec_path],
                pass_fds=(go_r, ready_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_DIR,
            )
            os.close(go_r)
            os.close(ready_w)
            procs.append({"spec": spec, "proc": proc, "go": go_w, "ready": ready_r, "log": log, "log_path": log_path})

        def wait_ready(p):
            ready, _, _ = select.select([p["ready"]], [], [], timeout)
            if not ready:
                raise WorkerError(f"{p['spec']['name']}: no answer within {timeout} s\n{_tail(p['log_path'])}")
            data = os.read(p["ready"], 1)
            if data != b"r":
                p["proc"].wait()
                raise WorkerError(
                    f"{p['spec']['name']} exited with code {p['proc'].returncode}\n{_tail(p['log_path'])}"
                )

        for p in procs:  # start-up runs concurrently and is not timed
            wait_ready(p)
        n_rounds = specs[0]["warmup"] + specs[0]["steps"]
        n = len(procs)
        for k in range(n_rounds):
            shift = (k + rotation_offset) % n
            for p in procs[shift:] + procs[:shift]:
                os.write(p["go"], b"g")
                wait_ready(p)  # the next "ready" comes when this arm reaches its next step (or finishes)
            if verbose:
                print(f"    round {k + 1}/{n_rounds}", end="\r", file=sys.stderr, flush=True)
        results = {}
        for p in procs:
            p["proc"].wait(timeout=timeout)
            if p["proc"].returncode != 0:
                raise WorkerError(f"{p['spec']['name']} failed\n{_tail(p['log_path'])}")
            with open(p["spec"]["result_path"]) as f:
                results[p["spec"]["name"]] = json.load(f)
        return results
    finally:
        for p in procs:
            for fd in (p["go"], p["ready"]):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if p["proc"].poll() is None:
                p["proc"].kill()
                p["proc"].wait()
            p["log"].close()


def _tail(path, n=40):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------------- models
MODEL_SIZES = {
    # name: (hidden_size, num_hidden_layers)
    "xs": (32, 2),
    "s": (64, 2),
    "m": (256, 4),
}


def default_cache_dir():
    """Where the tiny benchmark models are saved (outside the repository)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), "trl_powerflow_bench_models")


def model_dir_for(size, cache_dir=None):
    from trl_powerflow.toys.tiny_models import save_tiny_model

    hidden, layers = MODEL_SIZES[size]
    cache_dir = cache_dir or default_cache_dir()
    return save_tiny_model(
        os.path.join(cache_dir, f"tiny-qwen2-h{hidden}-l{layers}"), hidden_size=hidden, num_hidden_layers=layers
    )


def count_params(model_dir):
    from safetensors import safe_open

    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"
