"""Assemble `$OUT/gpu.md` and `$OUT/gpu.json` for benchmarks/gpu_check.sh: card, versions, install notes, the CUDA
test passes (JUnit XML + the `_gpu_pytest_plugin` diagnostics) and the step-cost result of `gpu_step_cost.py`.

    python -m benchmarks.gpu_report --out $OUT --work $WORK
Reads from WORK: phases.tsv (name, seconds, exit code, note), install.txt, switch.txt, diag_<pass>/diag-*.json;
from OUT: pytest_cuda_<pass>.xml, gpu_step_cost.json / .md. Every input is optional: what is missing is said so.
"""

import argparse
import glob
import json
import os
import platform
import subprocess
import time
import xml.etree.ElementTree as ET

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "trl-powerflow",
    "accelerate",
    "peft",
    "datasets",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "pyarrow",
    "fsspec",
    "dill",
    "multiprocess",
    "math-verify",
    "pytest",
    "pytest-xdist",
    "numpy",
)
PASSES = (("bf16", "bf16"), ("fp32", "float32: rerun of the bf16 failures"))


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["torch.version.cuda"] = torch.version.cuda
        out["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out["torch_device"] = props.name
            out["torch_device_memory_gib"] = round(props.total_memory / 2**30, 1)
            out["bf16_supported"] = torch.cuda.is_bf16_supported()
    except Exception as e:  # noqa: BLE001 - a report of what is there must not stop at what is not
        out["torch_error"] = repr(e)
    return out


def nvidia_smi():
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    first = text.splitlines()[0] if text else ""
    parts = [p.strip() for p in first.split(",")]
    keys = ("name", "driver_version", "memory_total")
    return dict(zip(keys, parts)) if parts and parts[0] else {"error": "nvidia-smi printed nothing"}


def read_junit(path):
    if not os.path.isfile(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable JUnit XML: {e}"}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    out = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "time_s": 0.0, "problems": []}
    for suite in suites:
        out["time_s"] += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            out["tests"] += 1
            cls = case.get("classname", "")
            node = cls.replace(".", "/") + ".py::" + case.get("name", "") if cls else case.get("name", "")
            failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
            if skipped is not None:
                out["skipped"] += 1
            elif failure is not None or error is not None:
                element = failure if failure is not None else error
                out["failed" if failure is not None else "errors"] += 1
                message = (element.get("message") or element.text or "").strip().splitlines()
                out["problems"].append(
                    {
                        "test": node,
                        "kind": "failure" if failure is not None else "error",
                        "message": (message[0] if message else "")[:300],
                    }
                )
            else:
                out["passed"] += 1
    return out


def read_diag(directory):
    files = sorted(glob.glob(os.path.join(directory, "diag-*.json")))
    if not files:
        return None
    configs, peaks, patched = {}, [], set()
    for path in files:
        with open(path) as f:
            d = json.load(f)
        for k, v in d.get("configs", {}).items():
            configs[k] = configs.get(k, 0) + v
        if d.get("cuda_peak_mib") is not None:
            peaks.append(d["cuda_peak_mib"])
        patched.add(bool(d.get("helpers_patched")))
    return {
        "processes": len(files),
        "configs": configs,
        "cuda_peak_mib_max": max(peaks) if peaks else None,
        "helpers_patched_by_plugin": sorted(patched),
    }


def read_phases(path):
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    rows.append(
                        {"phase": parts[0], "seconds": parts[1], "rc": parts[2], "note": parts[3] if parts[3:] else ""}
                    )
    return rows


def read_text(path):
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    return None


def test_section(report):
    lines = ["## Core tests on the GPU", ""]
    lines.append(f"Files: {report.get('test_files') or 'n/a'}")
    lines.append("")
    lines.append(f"Device switch: {(report.get('switch') or 'n/a').replace(chr(10), '; ')}")
    lines.append("")
    lines.append(
        "| pass | tests | passed | failed | errors | skipped | time (s) | configs built (where/dtype) | CUDA peak |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for key, label in PASSES:
        t = report["tests"].get(key)
        d = report["diag"].get(key)
        if t is None:
            bf16 = report["tests"].get("bf16") or {}
            why = (
                "not needed: no bf16 failure"
                if key == "fp32" and bf16.get("tests") and not bf16.get("problems")
                else ("not run or no JUnit XML")
            )
            lines.append(f"| {label} | {why} | | | | | | | |")
            continue
        if "error" in t:
            lines.append(f"| {label} | {t['error']} | | | | | | | |")
            continue
        configs = ", ".join(f"{k}: {v}" for k, v in sorted((d or {}).get("configs", {}).items())) or "n/a"
        peak = f"{d['cuda_peak_mib_max']:.0f} MiB" if d and d.get("cuda_peak_mib_max") is not None else "n/a"
        lines.append(
            f"| {label} | {t['tests']} | {t['passed']} | {t['failed']} | {t['errors']} | {t['skipped']} "
            f"| {t['time_s']:.0f} | {configs} | {peak} |"
        )
    bf16 = report["tests"].get("bf16") or {}
    fp32 = report["tests"].get("fp32") or {}
    fp32_bad = {p["test"] for p in fp32.get("problems", [])}
    fp32_ran = bool(fp32.get("tests"))
    if bf16.get("problems"):
        lines += ["", "Failures in the bf16 pass (classified by the float32 rerun on the same device):", ""]
        for p in bf16["problems"]:
            if not fp32_ran:
                verdict = "not rerun"
            elif p["test"] in fp32_bad:
                verdict = "fails in float32 too (device or test assumption, not precision)"
            else:
                verdict = "passes in float32 (bf16 tolerance)"
            lines.append(f"- `{p['test']}` ({p['kind']}; {verdict}): {p['message']}")
    lines.append("")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)

    report = {
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "nvidia_smi": nvidia_smi(),
        "versions": versions(),
        "install": read_text(os.path.join(args.work, "install.txt")),
        "switch": read_text(os.path.join(args.work, "switch.txt")),
        "test_files": read_text(os.path.join(args.work, "test_files.txt")),
        "phases": read_phases(os.path.join(args.work, "phases.tsv")),
        "tests": {key: read_junit(os.path.join(args.out, f"pytest_cuda_{key}.xml")) for key, _ in PASSES},
        "diag": {key: read_diag(os.path.join(args.work, f"diag_{key}")) for key, _ in PASSES},
    }
    bench_json = os.path.join(args.out, "gpu_step_cost.json")
    bench = None
    if os.path.isfile(bench_json):
        with open(bench_json) as f:
            bench = json.load(f)
        bench.pop("records", None)  # per-step records stay in gpu_step_cost.json
    report["step_cost"] = bench
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(report, f, indent=1)

    smi, v = report["nvidia_smi"], report["versions"]
    card = smi.get("name") or v.get("torch_device") or "unknown card"
    lines = [
        f"# GPU check of trl_powerflow: {card}",
        "",
        f"Written {report['written']} by `bash benchmarks/gpu_check.sh`.",
        "",
        f"Card (nvidia-smi): {smi.get('name', 'n/a')}, driver {smi.get('driver_version', 'n/a')}, "
        f"{smi.get('memory_total', 'n/a')}; torch sees {v.get('torch_device', 'no GPU')} "
        f"({v.get('torch_device_memory_gib', 'n/a')} GiB), CUDA {v.get('torch.version.cuda')}, "
        f"bf16 supported: {v.get('bf16_supported')}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k in PACKAGES or k == "python") + ".",
        "",
        "Install: " + (report["install"] or "n/a").replace("\n", "; "),
        "",
    ]
    lines += test_section(report)
    lines += ["## Step cost", ""]
    md_path = os.path.join(args.out, "gpu_step_cost.md")
    if os.path.isfile(md_path):
        with open(md_path) as f:
            lines.append(f.read().strip())
    else:
        lines.append("Not run or no result (see gpu_check.log).")
    if bench and bench.get("error"):
        lines += ["", "Error:", "", "```", bench["error"][-3000:], "```"]
    lines += ["", "## Phases", "", "| phase | seconds | exit code | note |", "|---|---|---|---|"]
    lines += [f"| {p['phase']} | {p['seconds']} | {p['rc']} | {p['note']} |" for p in report["phases"]]
    lines.append("")
    with open(os.path.join(args.out, "gpu.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
