"""zsqbench: a benchmark harness for zero-shot (data-free) quantization."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zsqbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
