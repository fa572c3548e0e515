"""Archipel's version, written in one place: pyproject.toml, read here from the
installed package's metadata. The CLI's ``--version``, the agent's hello, the control
plane's version answer, the chart's appVersion (checked by a test) and the image's tag
(build/image/build.sh) all say the same."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("archipel")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0.0.0+source"
