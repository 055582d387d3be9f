#!/usr/bin/env bash
# A real Kubernetes API for tests: etcd + kube-apiserver v1.20.2 on loopback, no kubelet.
# The apiserver is built once from Debian bookworm's own `kubernetes` source package with Debian's Go,
# and cached outside the clone.
#
#   scripts/test-cluster.sh build            prints the binary's path (builds it when missing)
#   scripts/test-cluster.sh start STATE_DIR  starts etcd + apiserver, prints "ready https://127.0.0.1:PORT";
#                                            writes STATE_DIR/admin.kubeconfig, STATE_DIR/token, *.pid;
#                                            APISERVER_ARGS adds flags (e.g. more admission plugins)
#   scripts/test-cluster.sh stop STATE_DIR   stops what start started (by PID)
#   scripts/test-cluster.sh kill-apiserver STATE_DIR / start-apiserver STATE_DIR
#                                            an API outage: kill -9 the apiserver, then start it again as it was
#   scripts/test-cluster.sh node build | up STATE_DIR | down STATE_DIR
#                                            a real single-node cluster (kubelet, containerd, kube-proxy, DNS):
#                                            see scripts/test-node.sh
set -euo pipefail
CACHE=${TOWER_K8S_CACHE:-$HOME/.cache/tower-k8s-v1.20.2}
BIN=$CACHE/kube-apiserver

need_tools() {
  if ! command -v go >/dev/null || ! command -v etcd >/dev/null || ! command -v openssl >/dev/null \
     || [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq golang-go etcd-server golang-github-modern-go-reflect2-dev openssl curl >&2
  fi
}

# the source package, prepared once per build in $1: fetched through a private deb-src list (the system's
# apt setup stays as it is), reflect2 swapped for Debian's, the version set, openapi generated
prepare_source() {
  local work=$1 uri codename
  uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '($1=="URIs:" || $1=="deb") && $2 !~ /security/ {print $2; exit}' || true)
  [ -n "$uri" ] || { echo "test-cluster: no Debian archive in the apt configuration" >&2; exit 1; }
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  mkdir -p "$work/apt/lists/partial"
  echo "deb-src $uri $codename main" > "$work/apt/src.list"
  local apt=(-o Dir::Etc::SourceList="$work/apt/src.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$work/apt/lists")
  apt-get "${apt[@]}" update -qq >&2
  (cd "$work" && apt-get "${apt[@]}" source --download-only kubernetes >&2 2>/dev/null)
  tar -xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
  local src; src=$(ls -d "$work"/kubernetes-1.*)
  # the vendored reflect2 1.0.1 crashes on Go >= 1.18; Debian ships 1.0.2
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  # report v1.20.2 rather than v0.0.0-master
  for f in "$src/staging/src/k8s.io/component-base/version/base.go" "$src/staging/src/k8s.io/client-go/pkg/version/base.go"; do
    sed -i 's/^\tgitMajor\b.*/\tgitMajor = "1"/; s/^\tgitMinor\b.*/\tgitMinor = "20"/; s/^\tgitVersion\b.*/\tgitVersion = "v1.20.2"/; s/^\tgitTreeState\b.*/\tgitTreeState = "clean"/' "$f"
  done
  mkdir -p "$work/gopath/src/k8s.io"; ln -s "$src" "$work/gopath/src/k8s.io/kubernetes"
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GO111MODULE=off GOPATH=$work/gopath GOFLAGS= GOCACHE=${GOCACHE:-$HOME/.cache/go-build}
    go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    dirs=$( (grep -rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin; grep -Rl --include='*.go' '+k8s:openapi-gen=' vendor/k8s.io) \
      | grep -v '_test.go' | grep -v '^vendor/k8s.io/code-generator/\|^vendor/k8s.io/sample-apiserver/' \
      | xargs -n1 dirname | LC_ALL=C sort -u | sed 's#^#k8s.io/kubernetes/#' | paste -sd,)
    "$work/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$work/openapi-report.txt" >&2
  )
}

# build COMPONENT...: each cmd/COMPONENT of the source package into the cache, unless it is there
build_components() {
  local missing=() c
  for c in "$@"; do [ -x "$CACHE/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  need_tools
  mkdir -p "$CACHE"
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/tower-k8s-build.XXXXXX")
  trap 'rm -rf "$work"; trap - RETURN' RETURN
  prepare_source "$work"
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GO111MODULE=off GOPATH=$work/gopath GOFLAGS= GOCACHE=${GOCACHE:-$HOME/.cache/go-build}
    for c in "${missing[@]}"; do
      t=$(date +%s)
      # kubectl runs in pods of busybox: static
      cgo=1; [ "$c" = kubectl ] && cgo=0
      CGO_ENABLED=$cgo go build -trimpath -ldflags '-s -w' -o "$CACHE/$c.tmp" "./cmd/$c" >&2
      mv "$CACHE/$c.tmp" "$CACHE/$c"
      echo "test-cluster: built $c in $(( $(date +%s) - t )) s" >&2
    done
  )
}

build() {
  build_components kube-apiserver
  echo "$BIN"
}

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start() {
  local d=${1:?state dir}
  [ -x "$BIN" ] || { echo "test-cluster: no kube-apiserver at $BIN (run: scripts/test-cluster.sh build)" >&2; exit 1; }
  command -v etcd >/dev/null || need_tools
  mkdir -p "$d/pki" "$d/etcd"; d=$(cd "$d" && pwd)
  local p=$d/pki
  if [ ! -f "$p/ca.crt" ]; then
    ( cd "$p"
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=kubernetes-ca"
      openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
      printf "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n" > san.cnf
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile san.cnf
      openssl genrsa -out sa.key 2048; openssl rsa -in sa.key -pubout -out sa.pub
      openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin"
      openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650
      openssl rand -hex 24 > ../token
      echo "$(cat ../token),admin-token,admin-token,system:masters" > tokens.csv
    ) >/dev/null 2>&1
  fi
  local ec ep ap
  ec=$(freeport); ep=$(freeport); ap=$(freeport)
  etcd --data-dir "$d/etcd" --listen-client-urls "http://127.0.0.1:$ec" --advertise-client-urls "http://127.0.0.1:$ec" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "default=http://127.0.0.1:$ep" >"$d/etcd.log" 2>&1 &
  echo $! > "$d/etcd.pid"
  "$BIN" --etcd-servers="http://127.0.0.1:$ec" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$ap" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --token-auth-file="$p/tokens.csv" \
    --authorization-mode=RBAC --service-cluster-ip-range=10.96.0.0/12 --endpoint-reconciler-type=none \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount ${NODE_APISERVER_ARGS:-} ${APISERVER_ARGS:-} >"$d/apiserver.log" 2>&1 &
  echo $! > "$d/apiserver.pid"
  cat > "$d/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: member
  cluster:
    server: https://127.0.0.1:$ap
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$p/admin.crt")
    client-key-data: $(base64 -w0 "$p/admin.key")
contexts:
- name: admin@member
  context: {cluster: member, user: admin}
current-context: admin@member
KC
  wait_ready "$d" "$ap"
}

wait_ready() {
  local d=$1 ap=$2 i
  for i in $(seq 1 240); do
    if curl -s --cacert "$d/pki/ca.crt" -H "Authorization: Bearer $(cat "$d/token")" "https://127.0.0.1:$ap/readyz" 2>/dev/null | grep -q '^ok'; then
      echo "ready https://127.0.0.1:$ap"; return
    fi
    sleep 0.25
  done
  echo "test-cluster: kube-apiserver did not become ready; see $d/apiserver.log" >&2; exit 1
}

# an outage of the API (etcd keeps running): kill -9 the apiserver, remembering how it ran
kill_apiserver() {
  local d=${1:?state dir} pid
  pid=$(cat "$d/apiserver.pid")
  cp "/proc/$pid/cmdline" "$d/apiserver.cmdline"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# ... and back, on the same port and state
start_apiserver() {
  local d=${1:?state dir} ap
  local -a cmd
  mapfile -d '' cmd < "$d/apiserver.cmdline"
  "${cmd[@]}" >>"$d/apiserver.log" 2>&1 &
  echo $! > "$d/apiserver.pid"
  ap=$(sed -n 's/.*--secure-port=\([0-9]*\).*/\1/p' < <(tr '\0' ' ' < "$d/apiserver.cmdline"))
  wait_ready "$d" "$ap"
}

stop() {
  local d=${1:?state dir} f
  for f in "$d/apiserver.pid" "$d/etcd.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}

case "${1:-}" in
  build) build ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  kill-apiserver) kill_apiserver "${2:-}" ;;
  start-apiserver) start_apiserver "${2:-}" ;;
  node) source "$(dirname "$0")/test-node.sh"; node_main "${2:-}" "${3:-}" ;;
  *) echo "usage: $0 build | start STATE_DIR | stop STATE_DIR | kill-apiserver STATE_DIR | start-apiserver STATE_DIR" \
       "| node build | node up STATE_DIR | node down STATE_DIR" >&2; exit 2 ;;
esac
