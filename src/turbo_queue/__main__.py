"""`python -m turbo_queue ...`"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="turbo-queue", description="turbo-queue command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="one producer feeding many consumer processes, side by side "
                                       "with multiprocessing.Queue")
    demo.add_argument("--events", type=int, default=500_000)
    demo.add_argument("--consumers", type=int, default=None, help="default: CPUs, 2 to 8")
    demo.add_argument("--work-us", type=float, default=0.0, help="CPU work per event, microseconds")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from turbo_queue._demo import run_demo

        if args.events <= 0 or (args.consumers is not None and args.consumers <= 0):
            parser.error("--events and --consumers must be positive")
        run_demo(args.events, args.consumers, args.work_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
