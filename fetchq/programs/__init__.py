"""The four programs as the package installs them.

Each module here is a link to its program file at the top of the repository
(``queueserver.py``, ``dispatcher.py``, ``worker.py``, ``output.py``), which
owns it.  Installed inside the package, rather than as top-level modules named
``worker`` or ``output``, they cannot shadow another project's modules."""
