# Shared setup for the scripts in scripts/, rpm/ and deb/ (sourced): strict
# mode, ROOT, and the working directory at the repository root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root for: $* (run as root or install sudo)" >&2; return 1; fi
}

# Debian packages by the command they provide.
need_pkgs() {
    local missing=() cmd pkg
    while [ $# -gt 0 ]; do
        cmd=$1 pkg=$2; shift 2
        command -v "$cmd" >/dev/null || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        as_root apt-get update -q >/dev/null
        as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    }
}

# The release binaries the packaging and install scripts ship (and docgen,
# which writes their man pages and completions), built if missing.
need_release_bins() {
    [ -x target/release/sparsebak ] && [ -x target/release/sparsebak-receiver ] &&
        [ -x target/release/sparsebak-docgen ] ||
        cargo build -q --release -p sparsebak -p sparsebak-receiver -p sparsebak-docgen
}

need_cargo() {
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
    if ! command -v cargo >/dev/null; then
        need_pkgs cargo cargo rustc rustc
    fi
    local v; v=$(rustc --version | awk '{print $2}')
    if [ "$(printf '%s\n1.87.0\n' "$v" | sort -V | head -1)" != 1.87.0 ]; then
        echo "rustc $v is too old: sparsebak needs 1.87 or newer (rustup.rs, or Debian backports)" >&2
        exit 1
    fi
}
