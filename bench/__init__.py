"""shadowbench: compare shadow-paging unshadow policies on simulated guest kernels."""

from bench import _compiled

__version__ = "0.1.0"

_compiled.install()  # before any simulator module is imported (bench/_compiled.py)
