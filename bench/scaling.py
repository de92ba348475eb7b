"""Scaling: 1 producer -> K consumer processes, each event costing `--work-us` of CPU in the
consumer, for turbo-queue (original API), the pure-Python 0.5.2, multiprocessing.Queue and
faster-fifo (when installed). Writes JSON and a PNG plot (events/s against K, with the ideal line).

    python bench/scaling.py --work-us 50 --consumers 1 2 4 8 14 16 120 --out docs/scaling-16core
"""

import argparse
import importlib.util
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import ensure_legacy, run_system  # noqa: E402

SYSTEMS = {
    "turbo-queue (original API)": ("tq", 2000),
    "turbo-queue 0.5.2": ("legacy", 1000),
    "multiprocessing.Queue": ("mpq", 0),
    "faster-fifo": ("ffq", 0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-us", type=float, default=50.0)
    ap.add_argument("--consumers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=3.0, help="about how long each point runs")
    ap.add_argument("--out", default="docs/scaling")
    ap.add_argument("--legacy-path", default=os.path.join(os.path.dirname(__file__), "..", ".side", "tq0.5.2"))
    args = ap.parse_args()
    legacy = ensure_legacy(os.path.abspath(args.legacy_path))
    systems = {k: v for k, v in SYSTEMS.items()
               if v[0] != "ffq" or importlib.util.find_spec("faster_fifo") is not None}
    ideal_per_consumer = 1e6 / args.work_us if args.work_us else None
    results = {name: {} for name in systems}
    for k in args.consumers:
        target = (ideal_per_consumer * k if ideal_per_consumer else 1e6) * args.seconds
        n = int(max(20_000, min(target, 3_000_000)) // 1000 * 1000)
        for name, (system, per_file) in systems.items():
            rate = run_system(system, n, k, per_file, "original", args.work_us, legacy)
            results[name][k] = rate
            ideal = f" ({rate / (ideal_per_consumer * k):.0%} of ideal)" if ideal_per_consumer else ""
            print(f"K={k:<4d} {name:28s} {rate:>12,.0f} events/s{ideal}", flush=True)
    host = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor(), "work_us": args.work_us}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"host": host, "events_per_s": results}, f, indent=2)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    ks = args.consumers
    if ideal_per_consumer:
        ax.plot(ks, [ideal_per_consumer * k for k in ks], "k--", label="ideal (K x 1/work)")
        cpus = os.cpu_count() or 1
        ax.axhline(ideal_per_consumer * cpus, color="grey", linestyle=":",
                   label=f"all {cpus} CPUs busy with work")
    for name, points in results.items():
        ax.plot(list(points), list(points.values()), marker="o", label=name)
    ax.set_xlabel("consumer processes (K)")
    ax.set_ylabel("events/s, end to end")
    ax.set_title(f"1 producer -> K consumers, {args.work_us:g} us of work per event, {os.cpu_count()} CPUs")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)
    print("wrote", args.out + ".json", args.out + ".png")


if __name__ == "__main__":
    main()
