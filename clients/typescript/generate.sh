#!/usr/bin/env bash
# Generates the TypeScript client (src/gen/) from proto/ with buf and ts-proto.
#   bash clients/typescript/generate.sh [OUTPUT_DIR]
# OUTPUT_DIR defaults to clients/typescript; the code goes to OUTPUT_DIR/src/gen (the
# test that checks the committed code is current generates into a temporary one).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
output="$(mkdir -p "${1:-$here}" && cd "${1:-$here}" && pwd)"

if [ ! -x "$here/node_modules/.bin/protoc-gen-ts_proto" ]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

buf="$(bash "$root/build/tools.sh" --paths | sed -n 's/^buf=//p')"
if [ ! -x "$buf" ]; then
  bash "$root/build/tools.sh" buf
fi

cd "$root/proto"
PATH="$here/node_modules/.bin:$PATH" "$buf" generate \
  --template "$here/buf.gen.yaml" --output "$output"
