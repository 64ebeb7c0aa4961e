"""Run by every Python process a test starts: the same DNS guard as the tests'."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

import dnsguard

dnsguard.install()
