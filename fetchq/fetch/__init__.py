"""One HTTP GET and its timing result: the only package that imports ``requests``.

Keeping ``requests`` behind this wall means one place decides how a fetch is
timed, how its body is counted and how every way it can fail is named, so a
result from any worker reads the same.
"""

from fetchq.fetch.failures import classify
from fetchq.fetch.fetcher import Fetcher

__all__ = ["Fetcher", "classify"]
