"""``python -m halotrans.benchmark``: run the project's benchmarks and print ratios against named peers.

Each benchmark is a script ``benchmarks/bench_<name>.py`` in the repository with
``run(quick: bool) -> list[dict]``; every row it returns is built with :func:`row` and compares a
figure of ours with a named peer measured in the same run. Results are printed as one table and
written to JSON (``benchmarks/results/<name>.json`` per benchmark and ``--json`` for all).

    python -m halotrans.benchmark --quick            # every benchmark, small sizes (2-core CPU: minutes)
    python -m halotrans.benchmark sims shear         # only these
    python -m halotrans.benchmark reference          # the segmentation reference run (~100 min): only when named
    python -m halotrans.benchmark --list
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from halotrans.formatting import number

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"


def row(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    peer: str | None = None,
    peer_value: float | None = None,
    higher_is_better: bool = True,
    note: str = "",
) -> dict[str, Any]:
    """One benchmark figure. ``ratio`` is how many times better ours is than the peer (>1 = better)."""
    ratio = None
    if peer_value is not None and value is not None and value > 0 and peer_value > 0:
        ratio = value / peer_value if higher_is_better else peer_value / value
    return {
        "benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "peer": peer,
        "peer_value": peer_value, "ratio": ratio, "higher_is_better": higher_is_better, "note": note,
    }


def machine() -> str:
    """A short description of the machine: CPU model and core count, or the GPU name."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {threads} threads (CPU)"


def peak_rss() -> int:
    """Peak resident set of this process in bytes (``VmHWM`` of /proc/self/status), for CPU memory
    figures. Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a
    probe started by a large benchmark process would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def format_table(rows: Sequence[dict]) -> str:
    """Rows as a Markdown table: benchmark, metric, ours, peer, peer's value, ratio (x better)."""
    head = ["benchmark", "metric", "ours", "unit", "peer", "peer value", "ratio (x better)", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["benchmark"], r["metric"], number(r["value"]), r["unit"], r["peer"] or "-",
                 number(r["peer_value"]), number(r["ratio"]), r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def available() -> dict[str, Path]:
    """Benchmark name -> script path, from ``benchmarks/bench_<name>.py``."""
    return {p.stem[len("bench_"):]: p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def load(name: str):
    """Import ``benchmarks/bench_<name>.py`` as a module."""
    scripts = available()
    if name not in scripts:
        raise SystemExit(f"unknown benchmark '{name}'; available: {', '.join(scripts) or 'none'}")
    spec = importlib.util.spec_from_file_location(f"halotrans_bench_{name}", scripts[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # registered before it runs, as an import would (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


def write_json(path: Path, payload: dict) -> None:
    from halotrans.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halotrans.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", type=Path, default=None, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)
    scripts = available()
    if args.list:
        for name, path in scripts.items():
            module = load(name)
            doc = (module.__doc__ or "").strip().splitlines()
            extra = "" if getattr(module, "IN_DEFAULT", True) else "  [only when named]"
            print(f"{name:<12} {doc[0] if doc else path.name}{extra}")
        return 0
    # a benchmark whose module sets IN_DEFAULT = False (the ~100-min reference run) runs only when named
    names = args.names or [n for n in scripts if getattr(load(n), "IN_DEFAULT", True)]
    all_rows: list[dict] = []
    for name in names:
        module = load(name)
        t0 = time.perf_counter()
        print(f"== {name} ==", flush=True)
        rows = module.run(quick=args.quick)
        dt = time.perf_counter() - t0
        print(format_table(rows), flush=True)
        print(f"({name}: {dt:.1f} s)\n", flush=True)
        payload = {"benchmark": name, "quick": args.quick, "machine": machine(),
                   "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": dt, "rows": rows}
        write_json(BENCH_DIR / "results" / f"{name}{'_quick' if args.quick else ''}.json", payload)
        all_rows += rows
    print("== all ==")
    print(format_table(all_rows))
    if args.json:
        write_json(args.json, {"machine": machine(), "quick": args.quick, "rows": all_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
