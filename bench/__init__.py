"""shadowbench: compare shadow-paging unshadow policies on simulated guest kernels."""

import os as _os
import signal as _signal
import sys as _sys

if _sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] if _sys.argv else "") == "shadowbench":
    # started as the command line (python -m bench, shadowbench): Ctrl-C while the modules
    # load is one line, not a traceback (bench.__main__.main installs the usual handling)
    _signal.signal(_signal.SIGINT, lambda signum, frame: (
        _sys.stderr.write("bench: interrupted by SIGINT before anything was written\n"),
        _os._exit(128 + signum)))

from bench import _compiled  # noqa: E402

__version__ = "0.1.0"

_compiled.install()  # before any simulator module is imported (bench/_compiled.py)
