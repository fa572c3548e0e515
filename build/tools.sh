#!/usr/bin/env bash
# Builds the Go programs Archipel's tests and demo run (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd, kwok, grpcurl, helm, buf, and the
# protoc-gen-go and protoc-gen-go-grpc plugins that generate clients/go) from the Go module
# proxy, into a cache outside the repository keyed by version, so a warm machine
# rebuilds nothing. Each program has its own module under build/ because they pin
# different versions of shared dependencies (grpc, otel, etcd client).
#
# Usage: build/tools.sh [tool ...]   build (default: all tools)
#        build/tools.sh --paths        print where each program is
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${ARCHIPEL_CACHE:-$HOME/.cache/archipel}
bin_dir=$cache/bin
share_dir=$cache/share
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

kube_version=v1.35.4
etcd_version=v3.6.16
kwok_version=v0.7.0
grpcurl_version=v1.9.4
helm_version=v3.22.0
buf_version=v1.75.0
protoc_gen_go_version=v1.36.12
protoc_gen_go_grpc_version=v1.6.2


need_go() {
  command -v go >/dev/null || { echo "tools.sh: Go is required to build $1 (apt-get install golang-go, or a Go >= 1.25)" >&2; exit 1; }
}

# build MODULE_DIR OUTPUT PACKAGE [LDFLAGS]
build() {
  local mod=$1 out=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$out" ]; then return 0; fi
  need_go "$(basename "$out")"
  local started=$SECONDS tmp="$out.tmp.$$"
  echo "tools.sh: building $(basename "$out") (cold builds take minutes)" >&2
  (cd "$here/$mod" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg")
  mv -f "$tmp" "$out"
  echo "tools.sh: built $(basename "$out") in $((SECONDS - started))s" >&2
}

kube() {
  local v=k8s.io/component-base/version minor=${kube_version#v1.}
  minor=${minor%%.*}
  local ld="-X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    build kube "$bin_dir/$c-$kube_version" "k8s.io/kubernetes/cmd/$c" "$ld"
  done
}

etcd() {
  build etcd "$bin_dir/etcd-$etcd_version" go.etcd.io/etcd/server/v3
}

kwok() {
  build kwok "$bin_dir/kwok-$kwok_version" sigs.k8s.io/kwok/cmd/kwok
  # kwok run standalone needs Stage objects; they ship in its module source.
  local stages
  stages=$(paths | sed -n "s/^kwok-stages=//p")
  if [ ! -d "$stages" ]; then
    local src
    src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
    mkdir -p "$stages.tmp.$$"
    local kind f
    # Nodes become Ready at once and keep a renewed Lease (so the node lifecycle
    # controller never marks them NotReady); Pods go straight to Running.
    for kind in node/fast node/heartbeat-with-lease pod/fast; do
      for f in "$src/kustomize/stage/$kind"/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || cp "$f" "$stages.tmp.$$/"
      done
    done
    chmod -R u+w "$stages.tmp.$$"
    mv "$stages.tmp.$$" "$stages"
  fi
}

grpcurl() {
  build grpcurl "$bin_dir/grpcurl-$grpcurl_version" github.com/fullstorydev/grpcurl/cmd/grpcurl
}

helm() {
  build helm "$bin_dir/helm-$helm_version" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$helm_version"
}

buf() {
  build buf "$bin_dir/buf-$buf_version" github.com/bufbuild/buf/cmd/buf
}

# The plugins buf runs to generate the Go client (clients/go/generate.sh).
protoc-gen-go() {
  build protoc-gen-go "$bin_dir/protoc-gen-go-$protoc_gen_go_version" \
    google.golang.org/protobuf/cmd/protoc-gen-go
}

protoc-gen-go-grpc() {
  build protoc-gen-go-grpc "$bin_dir/protoc-gen-go-grpc-$protoc_gen_go_grpc_version" \
    google.golang.org/grpc/cmd/protoc-gen-go-grpc
}

# Where each program lives; the Python launcher reads this instead of knowing the layout.
paths() {
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    echo "$c=$bin_dir/$c-$kube_version"
  done
  echo "etcd=$bin_dir/etcd-$etcd_version"
  echo "kwok=$bin_dir/kwok-$kwok_version"
  echo "kwok-stages=$share_dir/kwok-$kwok_version/stages-v2"
  echo "grpcurl=$bin_dir/grpcurl-$grpcurl_version"
  echo "helm=$bin_dir/helm-$helm_version"
  echo "buf=$bin_dir/buf-$buf_version"
  echo "protoc-gen-go=$bin_dir/protoc-gen-go-$protoc_gen_go_version"
  echo "protoc-gen-go-grpc=$bin_dir/protoc-gen-go-grpc-$protoc_gen_go_grpc_version"
  echo "kube-version=$kube_version"
}

if [ "${1:-}" = "--paths" ]; then paths; exit 0; fi
mkdir -p "$bin_dir" "$share_dir"
# One builder at a time: make, pytest and the demo may all ask at once.
exec 9>"$cache/.build.lock"
flock 9
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(etcd grpcurl kwok kube helm buf protoc-gen-go protoc-gen-go-grpc)
for t in "${tools[@]}"; do
  case $t in
    kube|etcd|kwok|grpcurl|helm|buf|protoc-gen-go|protoc-gen-go-grpc) "$t" ;;
    *) echo "tools.sh: unknown tool '$t' (kube, etcd, kwok, grpcurl, helm, buf, protoc-gen-go, protoc-gen-go-grpc)" >&2; exit 1 ;;
  esac
done
