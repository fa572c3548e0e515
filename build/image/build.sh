#!/usr/bin/env bash
# Builds Archipel's image (make image): a base from Debian's packages (mmdebstrap),
# imported into buildah, then the Containerfile on top, with the wheel of this
# checkout and its dependencies as uv.lock pins them. No registry is needed.
#
# Usage: build/image/build.sh [TAG]     (default: archipel:<version in pyproject.toml>)
# The base is cached by its Debian suite; ARCHIPEL_REBUILD_BASE=1 makes it again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${ARCHIPEL_CACHE:-$HOME/.cache/archipel}
uv=${UV:-$cache/uv-0.13.8/bin/uv}
suite=bookworm
base=localhost/archipel-base:$suite
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)
tag=${1:-localhost/archipel:$version}

for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || {
    echo "build.sh: $tool is required (apt-get install mmdebstrap buildah)" >&2; exit 1; }
done

started=$SECONDS
if [ -n "${ARCHIPEL_REBUILD_BASE:-}" ] || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "build.sh: making the base from Debian $suite" >&2
  # minbase plus Python; no documentation, manual pages or locales in the image.
  mmdebstrap --variant=minbase --mode=root --quiet \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$work/base.tar" http://deb.debian.org/debian
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$work/base.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
  buildah commit --quiet --rm "$container" "$base" >/dev/null
fi

context=$(mktemp -d)
trap 'rm -rf "$context" ${work:+"$work"}' EXIT
(cd "$root" && "$uv" build --quiet --wheel --out-dir "$context" \
  && "$uv" export --quiet --frozen --no-dev --no-emit-project --output-file "$context/requirements.txt")
# The wheels are fetched here, with this machine's index settings and certificates,
# checked against uv.lock's hashes; the image build itself needs no network.
python3 -m pip download --quiet --disable-pip-version-check --require-hashes \
  --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
  -r "$context/requirements.txt" -d "$context/wheels"
buildah bud --quiet --isolation chroot --layers=false --build-arg "BASE=$base" \
  --label "io.archipel.source=${ARCHIPEL_SOURCE_DIGEST:-}" \
  -f "$here/Containerfile" -t "$tag" "$context" >/dev/null
# The image this tag named before is no longer wanted.
buildah rmi --prune >/dev/null 2>&1 || true
echo "build.sh: built $tag in $((SECONDS - started))s" >&2
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag" >&2
