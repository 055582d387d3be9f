#!/usr/bin/env bash
# Builds test/interop/go-peer (the Go-side wire protocol peer) with Debian's Go and Debian's copies
# of golang.org/x/crypto and gorilla/websocket; prints the binary's path. Cached by source hash.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/test/interop/go-peer/main.go
CACHE=${TOWER_GO_PEER_CACHE:-$HOME/.cache/tower-go-peer}
BIN=$CACHE/go-peer-$(sha256sum "$SRC" | cut -c1-16)
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/golang.org/x/crypto/ssh ] || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq golang-go golang-golang-x-crypto-dev golang-github-gorilla-websocket-dev >&2
fi
mkdir -p "$CACHE"
GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE=${GOCACHE:-$HOME/.cache/go-build} go build -o "$BIN.tmp" "$SRC" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
