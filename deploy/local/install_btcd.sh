#!/usr/bin/env bash
# Installs btcd, a full Bitcoin node written in Go, for the block feed's integration test (regtest).
# Builds a pinned release from the Go module proxy into the stack's state directory and prints the
# binary's path on its last line. Already installed at this version: returns at once.
# Needs Go (1.22+). A cold build takes about 1.5 minutes on 2 cores; cached modules make it faster.
set -euo pipefail

version="${BTCD_VERSION:-v0.26.2}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="${HASHATLAS_STATE_DIR:-$root/.stack}/bin"
stamp="$bin_dir/btcd.version"

if [[ -x "$bin_dir/btcd" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
  echo "$bin_dir/btcd"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "install_btcd: Go is required to build btcd $version (apt-get install golang-go, or go.dev)" >&2
  exit 1
fi
mkdir -p "$bin_dir"
echo "install_btcd: building github.com/btcsuite/btcd@$version into $bin_dir" >&2
GOBIN="$bin_dir" GOFLAGS="-buildvcs=false" go install "github.com/btcsuite/btcd@$version"
echo "$version" > "$stamp"
echo "$bin_dir/btcd"
