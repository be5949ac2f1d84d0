#!/bin/bash
# Resuming a cut backup: a full backup of a SIZE_MIB image of random data
# (nothing compresses, nothing repeats) is cut by a lost link once about
# 25 %, 50 % and 90 % of it has reached the receiver; the next backup
# resumes. Prints, per cut point: the chunks the receiver had stored, the
# bytes the resumed backup sent against what the cut session lacked, and
# its time against a whole full backup of the same image (best of ROUNDS,
# interleaved, with the spread).
#
#   bash bench/resume.sh                  # 1024 MiB image, 3 rounds
#   SIZE_MIB=256 ROUNDS=2 bash bench/resume.sh
#
# A benchmark, not a test: it asserts nothing (tests/tests/resume.rs does).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
need_cargo
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-resume.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/vols"
printf 'bench passphrase\n' > "$W/passphrase"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/base.img"
SB=("$BIN/sparsebak" --dest "file://$W/arch" --meta-dir "$W/meta" --local "$W/vols" --passphrase-file "$W/passphrase")
"${SB[@]}" arch-init >/dev/null
CHUNKS=$((SIZE_MIB * 4))
now() { date +%s.%N; }
n=0
declare -A best_full best_resume spread_full spread_resume sent kept
for round in $(seq "$ROUNDS"); do
    for pct in 25 50 90; do
        # A whole full backup, then a cut one resumed: interleaved.
        n=$((n + 1)); v=full$n.img
        ln "$W/base.img" "$W/vols/$v"
        t=$(now); "${SB[@]}" backup "$v" >/dev/null
        full=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
        "${SB[@]}" delete --force "$v" >/dev/null; rm "$W/vols/$v"
        n=$((n + 1)); v=cut$n.img
        ln "$W/base.img" "$W/vols/$v"
        printf '#!/bin/sh\nexec %s %s - %s "$@"\n' "$BIN/cutpipe" $((CHUNKS * pct / 100 * 262144)) \
            "$BIN/sparsebak-receiver" > "$W/cut.sh"
        chmod +x "$W/cut.sh"
        "${SB[@]}" backup "$v" --remote-receiver "$W/cut.sh" >/dev/null 2>&1 || true
        id=$(cat "$W/meta/archives/"*/volumes/"$v"/id)
        m=$(stat -c %s "$W/arch/volumes/$id/.incoming/manifest")
        k=$(( (m - 12) / 41 ))
        t=$(now); out=$("${SB[@]}" backup "$v" --json)
        res=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
        s=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["bytes_sent"])')
        "${SB[@]}" delete --force "$v" >/dev/null; rm "$W/vols/$v"
        kept[$pct]=$k; sent[$pct]=$s
        for kind in full resume; do
            val=$([ $kind = full ] && echo "$full" || echo "$res")
            eval "cur=\${best_$kind[$pct]:-}"
            eval "sp=\${spread_$kind[$pct]:-}"
            if [ -z "$cur" ] || awk -v a="$val" -v b="$cur" 'BEGIN { exit !(a < b) }'; then
                eval "best_$kind[$pct]=$val"
            fi
            eval "spread_$kind[$pct]=\"${sp:+$sp }$val\""
        done
    done
done
echo "== resume after a cut link: ${SIZE_MIB} MiB of random data, $CHUNKS chunks of 256 KiB, best of $ROUNDS"
printf '%-6s %8s %16s %16s %10s %10s %s\n' cut stored "sent (MiB)" "lacked (MiB)" "resume s" "full s" "spreads (resume | full)"
for pct in 25 50 90; do
    lacked=$(( (CHUNKS - kept[$pct]) * 262144 ))
    printf '%-6s %8s %16.1f %16.1f %10s %10s %s | %s\n' "$pct%" "${kept[$pct]}" \
        "$(awk -v b="${sent[$pct]}" 'BEGIN { print b / 1048576 }')" \
        "$(awk -v b="$lacked" 'BEGIN { print b / 1048576 }')" \
        "${best_resume[$pct]}" "${best_full[$pct]}" "${spread_resume[$pct]}" "${spread_full[$pct]}"
done
