"""``python -m fetchq``: the same as the ``fetchq`` command."""

from fetchq.cli import main

main()
