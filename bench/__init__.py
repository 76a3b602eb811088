"""shadowbench: compare shadow-paging unshadow policies on simulated guest kernels."""

__version__ = "0.1.0"
