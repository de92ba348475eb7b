"""`python -m turbo_queue ...`: the `turbo-queue` command."""

import sys

from turbo_queue.cli import main

if __name__ == "__main__":
    sys.exit(main())
