"""Archipel's container image, built and run on this machine without a registry.

``build/image/build.sh`` (``make image``) builds it with mmdebstrap and buildah.
``podman run`` cannot start containers here (crun may not set rlimits), so a program
of the image runs with ``buildah run --isolation chroot``: the image's filesystem, user
and environment, on the host's network, which is what the in-cluster test needs to
reach a member's API server and the control plane on loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from archipel.fleet.processes import ManagedProcess, ProcessError
from archipel.fleet.tools import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "build" / "image" / "build.sh"


def version() -> str:
    """The version in pyproject.toml, which names the image."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise ProcessError("pyproject.toml names no version")
    return found.group(1)


def tag() -> str:
    return f"localhost/archipel:{version()}"


def _buildah(*args: str) -> str:
    if shutil.which("buildah") is None:
        raise ProcessError("buildah is required (apt-get install buildah mmdebstrap)")
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProcessError(f"buildah {' '.join(args)}: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


# What goes into the image: a change to any of it means the image is stale.
_SOURCES = ("archipel", "controlplane", "agent", "pyproject.toml", "uv.lock", "build/image")


def source_digest() -> str:
    """A digest of this checkout's files that the image is built from."""
    digest = hashlib.sha256()
    for top in _SOURCES:
        root = REPO_ROOT / top
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure(*, rebuild: bool = False) -> str:
    """The image's tag, building it first when it is missing, was built from other
    sources than this checkout's, or ``rebuild``."""
    name = tag()
    wanted = source_digest()
    inspected = subprocess.run(
        [
            "buildah",
            "inspect",
            "--type",
            "image",
            "--format",
            '{{index .OCIv1.Config.Labels "io.archipel.source"}}',
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    current = inspected.stdout.strip() if inspected.returncode == 0 else ""
    if rebuild or current != wanted:
        built = subprocess.run(
            ["bash", str(BUILD_SCRIPT), name],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "ARCHIPEL_SOURCE_DIGEST": wanted},
        )
        if built.returncode != 0:
            raise ProcessError(f"building the image failed:\n{built.stderr[-4000:]}")
    return name


def _real(path: str) -> str:
    return "/run/" + path.removeprefix("/var/run/") if path.startswith("/var/run/") else path


class ImageProcess:
    """One program of the image, run like a container's process."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        mounts: Mapping[Path, str] = {},
        env: Mapping[str, str] = {},
    ) -> None:
        self.container = _buildah("from", "--quiet", ensure())
        # /var/run is a link to /run in the image, and buildah does not follow links
        # when it mounts: the service-account path is given by its real place.
        options = [f"--volume={host}:{_real(inside)}:ro" for host, inside in mounts.items()]
        options += [f"--env={key}={value}" for key, value in env.items()]
        self.process = ManagedProcess(
            name,
            ["buildah", "run", "--isolation", "chroot", *options, self.container, "--", *argv],
            log_path=log_path,
        )

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            _buildah("rm", self.container)
