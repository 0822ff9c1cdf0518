"""nacosae: explain the units of vision models in words.

Kept import-light on purpose: `nacosae --help` must not pay for torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nacosae")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "explain"]


def __getattr__(name: str):  # noqa: ANN202 - lazy, so `import nacosae` stays light
    if name == "explain":
        from nacosae.api import explain

        return explain
    raise AttributeError(f"module 'nacosae' has no attribute {name!r}")
