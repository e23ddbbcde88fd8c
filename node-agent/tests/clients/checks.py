"""What the stock-client scripts here share: a check that prints one line per pass and
exits non-zero with the reason on the first failure."""

import sys


def fail(what):
    print(f"FAIL {what}", file=sys.stderr)
    sys.exit(1)


def check(cond, what):
    """Passes `what` (its label: the text before the first ':') or fails with it whole."""
    if not cond:
        fail(what)
    print(f"ok {what.split(':')[0]}")
