"""fetchq: a distributed URL-fetch queue on multiprocessing.managers."""

__version__ = "0.1.0"
