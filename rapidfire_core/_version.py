"""The package's release version: the one place it is written.

setup.py reads ``BASE_VERSION`` (as text, without importing the package) and appends the build
variant as a PEP 440 local label (``0.1.0+cu130``, ``0.1.0+cpu``) unless ``RAPIDFIRE_LOCAL_VERSION=0``;
:data:`rapidfire_core.__version__` is the installed distribution's version, this only when running
from a source tree that was never installed.
"""

BASE_VERSION = "0.1.0"
