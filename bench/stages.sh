#!/bin/bash
# Where a full backup's CPU goes, stage by stage, and what that says about
# more cores: every thread of the agent and of the receiver is sampled by
# name (bench/cpu-by-thread.py), the rest of the machine (kernel threads,
# page cache) from /proc/stat. Image and archive in RAM, the image warm:
# the pipeline-bound case. A benchmark, not a test: it asserts nothing.
#
#   bash bench/stages.sh                     # 1 GiB image, best of 3
#   SIZE_MIB=512 ROUNDS=2 bash bench/stages.sh
#
# The projection to N cores assumes each stage scales over the threads it
# has (the sealing workers: one per core; the receiver's writers: 8) and a
# stage with one thread does not: time per GiB at N cores is the largest of
# (all busy CPU)/N, each one-thread stage's CPU, and each pool's CPU over
# its threads (capped at N). The machine limit (bench-limit) is sampled the
# same way; it scales as its busy CPU over N.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
need_cargo
need_pkgs gawk gawk
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d /dev/shm/sparsebak-stages.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/vols"
printf 'bench passphrase\n' > "$W/passphrase"
"$BIN/gen-image" create "$W/vols/img" "$SIZE_MIB" 1 >/dev/null
SB=("$BIN/sparsebak" --dest "file://$W/archive" --meta-dir "$W/meta" --local "$W/vols" --passphrase-file "$W/passphrase")
ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# One sampled run: "wall busy" on stdout, the per-thread table in $1.
sampled() {
    local out=$1; shift
    cat "$W/vols/img" >/dev/null
    local b t; b=$(ticks); t=$(date +%s.%N)
    python3 "$ROOT/bench/cpu-by-thread.py" "$out" -- "$@" >/dev/null
    awk -v t="$t" -v n="$(date +%s.%N)" -v b="$b" -v a="$(ticks)" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.3f %.2f\n", n - t, (a - b) / hz }'
}
echo "== where a full backup's CPU goes: ${SIZE_MIB} MiB in RAM, $(nproc) cores, best of $ROUNDS"
best_b="" best_l=""
for r in $(seq "$ROUNDS"); do
    rm -rf "$W/archive" "$W/meta" "$W/vols/.sparsebak"
    "${SB[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
    read -r wall busy <<<"$(sampled "$W/b$r" "${SB[@]}" backup img)"
    if [ -z "$best_b" ] || awk -v a="$wall" -v b="${best_b%% *}" 'BEGIN { exit !(a < b) }'; then
        best_b="$wall $busy"; cp "$W/b$r" "$W/b"
    fi
    read -r wall busy <<<"$(sampled "$W/l$r" "$BIN/bench-limit" "$W/vols/img" 262144 3 on)"
    if [ -z "$best_l" ] || awk -v a="$wall" -v b="${best_l%% *}" 'BEGIN { exit !(a < b) }'; then
        best_l="$wall $busy"; cp "$W/l$r" "$W/l"
    fi
done
awk -v gib="$(awk -v m="$SIZE_MIB" 'BEGIN { print m / 1024 }')" \
    -v bb="$best_b" -v bl="$best_l" -v cores="$(nproc)" '
function stage(p, t) {
    if (p ~ /^sparsebak-recei/) p = "receiver"; else if (p == "sparsebak") p = "agent"
    if (t == p || t == "sparsebak" || t ~ /^sparsebak-recei/) t = "main"
    return p " " t
}
FNR == 1 { file++ }
$1 == "(sampler)" { if (file == 1) samp_b += $3 + $4; else samp_l += $3 + $4; next }
file == 1 { s = stage($1, $2); cpu[s] += $3 + $4; usr[s] += $3; sys[s] += $4; tot_b += $3 + $4 }
file == 2 { tot_l += $3 + $4 }
END {
    split(bb, b, " "); split(bl, l, " ")
    b[2] -= samp_b; l[2] -= samp_l   # the sampler is not the tool
    printf "\n%-36s %9s %9s %9s\n", "stage (full backup)", "CPU-s/GiB", "user", "sys"
    n = asorti(cpu, names)
    for (i = 1; i <= n; i++) { s = names[i]; printf "%-36s %9.2f %9.2f %9.2f\n", s, cpu[s] / gib, usr[s] / gib, sys[s] / gib }
    other = b[2] - tot_b; if (other < 0) other = 0
    printf "%-36s %9.2f\n", "kernel threads, page cache, other", other / gib
    printf "%-36s %9.2f   (left out)\n", "the sampler itself", samp_b / gib
    printf "%-36s %9.2f   (wall %.3f s)\n", "whole machine, busy", b[2] / gib, b[1]
    printf "%-36s %9.2f   (wall %.3f s)\n", "machine limit (bench-limit), busy", l[2] / gib, l[1]
    printf "%-36s %9.2f   target <= 1.3\n", "busy CPU: full backup / limit", b[2] / l[2]
    # Projection: seconds per GiB at N cores.
    printf "\n%-8s %14s %14s %8s  %s\n", "cores", "full s/GiB", "limit s/GiB", "ratio", "bound by"
    for (n = 2; n <= 16; n *= 2) {
        t = b[2] / gib / n; why = "all CPU / cores"
        for (s in cpu) {
            c = cpu[s] / gib; k = 1
            if (s ~ /sbk-seal/) k = n
            else if (s ~ /sbk-write/) k = (n < 8 ? n : 8)
            else if (s ~ /exited/) continue
            if (c / k > t) { t = c / k; why = s (k > 1 ? " over " k " threads" : " (one thread)") }
        }
        lim = l[2] / gib / n
        printf "%-8d %14.3f %14.3f %8.2f  %s%s\n", n, t, lim, t / lim, why, (n == cores ? "   (measured here: " sprintf("%.3f", b[1] / gib) " s/GiB)" : "")
    }
}' "$W/b" "$W/l"
