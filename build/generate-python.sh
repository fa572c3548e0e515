#!/usr/bin/env bash
# Generates the Python messages, gRPC stubs and their type stubs from proto/ into
# OUTPUT_DIR/archipel/v1alpha*/ (`make proto` runs it with the repository root; the
# test that checks the committed code is current runs it with a temporary directory).
#
# Usage: build/generate-python.sh [OUTPUT_DIR]   (default: the repository root)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${1:-$root}" && cd "${1:-$root}" && pwd)
venv="$root/.venv/bin"

cd "$root"
for package in proto/archipel/v1alpha*/; do
  version=$(basename "$package")
  mkdir -p "$out/archipel/$version"
  # Files for messages that no longer exist must not linger.
  rm -f "$out/archipel/$version"/*_pb2*.py "$out/archipel/$version"/*_pb2*.pyi
  touch "$out/archipel/$version/__init__.py"
done
"$venv/python" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$venv/protoc-gen-mypy" --mypy_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$venv/protoc-gen-mypy_grpc" --mypy_grpc_out="$out" \
  proto/archipel/v1alpha*/*.proto 2> >(grep -v "^Writing mypy" >&2)
