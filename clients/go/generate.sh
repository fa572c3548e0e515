#!/usr/bin/env bash
# Generates the Go client's messages and gRPC stubs from proto/ (`make proto` runs it).
# The output is committed; tests/integration/test_go_client.py regenerates into a
# temporary directory and fails if anything differs.
#
# Usage: clients/go/generate.sh [OUTPUT_DIR]   (default: clients/go)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$here}" && cd "${1:-$here}" && pwd)

bash "$root/build/tools.sh" buf protoc-gen-go protoc-gen-go-grpc
paths=$(bash "$root/build/tools.sh" --paths)
tool() { sed -n "s/^$1=//p" <<<"$paths"; }

# buf.gen.yaml names the plugins; link this checkout's versions in under those names.
plugins=$(mktemp -d)
trap 'rm -rf "$plugins"' EXIT
ln -s "$(tool protoc-gen-go)" "$plugins/protoc-gen-go"
ln -s "$(tool protoc-gen-go-grpc)" "$plugins/protoc-gen-go-grpc"

# Files for messages that no longer exist must not linger.
rm -f "$out"/archipel/v1alpha1/*.pb.go "$out"/archipel/v1alpha2/*.pb.go
cd "$root/proto"
PATH="$plugins:$PATH" "$(tool buf)" generate --template "$here/buf.gen.yaml" -o "$out" .
