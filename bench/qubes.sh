#!/bin/bash
# Whole-qube restore (`restore-qubes`) against a plain restore of the same
# volume: the cost of recreating a qube (qvm-* calls) and of streaming its
# data in order through `qvm-volume import` rather than writing a file.
#
#   bash bench/qubes.sh              # 1 GiB private volume
#   SIZE_MIB=256 ROUNDS=2 bash bench/qubes.sh
#
# The qvm-* tools are the test stand-ins (tests/src/fakequbesd.rs): the
# import stand-in copies its stdin to a file, so it costs what a fast
# qubesd would. Caches are dropped before each step; best of ROUNDS,
# interleaved. A benchmark, not a test: it asserts nothing. Needs root.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
[ "$(id -u)" = 0 ] || { echo "run as root (drop_caches)" >&2; exit 1; }
need_cargo
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-qubes.XXXXXX")
trap 'rm -rf "$W"' EXIT
VOLS=$W/vols QX=$W/var-lib-qubes
mkdir -p "$VOLS" "$QX" "$W/qubesd"
printf 'bench passphrase\n' > "$W/passphrase"
printf 'qubes_xml = "%s/qubes.xml"\n' "$QX" > "$W/config.toml"
SB=("$BIN/sparsebak" --config "$W/config.toml" --dest "file://$W/archive" --meta-dir "$W/meta" --local "$VOLS" --passphrase-file "$W/passphrase")
export PATH="$BIN:$PATH" SBK_FAKE_QUBESD=$W/qubesd/state.json
cat > "$QX/qubes.xml" <<'XML'
<?xml version='1.0' encoding='UTF-8'?>
<qubes>
  <labels><label id="label-1" color="0xcc0000">red</label><label id="label-8" color="0x000000">black</label></labels>
  <domains>
    <domain id="domain-0" class="AdminVM"><properties><property name="name">dom0</property><property name="label">label-8</property></properties></domain>
    <domain id="domain-1" class="TemplateVM"><properties><property name="name">tpl</property><property name="label">label-8</property></properties>
      <features><feature name="qrexec">1</feature></features></domain>
    <domain id="domain-2" class="AppVM"><properties><property name="name">work</property><property name="label">label-1</property>
      <property name="template">tpl</property><property name="memory">800</property></properties>
      <features><feature name="service.crond">1</feature></features><tags><tag name="work"/></tags></domain>
  </domains>
</qubes>
XML
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null; awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
col_min() { awk -v c="$1" 'NR == 1 || $c < m { m = $c } END { printf "%.3f", m }' "$2"; }

"${SB[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
"$BIN/gen-image" create "$VOLS/vm-work-private" "$SIZE_MIB" 1 >/dev/null
"$BIN/gen-image" create "$VOLS/vm-tpl-root" 64 2 >/dev/null
"$BIN/gen-image" create "$VOLS/vm-tpl-private" 16 3 >/dev/null
"${SB[@]}" backup vm-work-private vm-tpl-root vm-tpl-private >/dev/null

fresh() {
    rm -rf "$W/qubesd/volumes"
    printf '{"qubes":{"dom0":{"class":"AdminVM","label":"black","template":null,"properties":{},"features":{},"tags":[],"firewall":[],"notes":"","devices":[],"volumes":{}}},"default_template":null}' >"$SBK_FAKE_QUBESD"
}
R=$W/restored
whole() { fresh; cold; timed "${SB[@]}" restore-qubes; cmp -s "$W/qubesd/volumes/work-private.img" "$VOLS/vm-work-private" || { echo "restore-qubes: work's volume differs" >&2; exit 1; }; }
plain() { rm -f "$R"; cold; timed "${SB[@]}" restore vm-work-private --save-to "$R"; rm -f "$R"; }
OUT=$W/t; : >"$OUT"
for r in $(seq "$ROUNDS"); do
    echo "$(whole) $(plain)" >>"$OUT"
done
T_WHOLE=$(col_min 1 "$OUT") T_PLAIN=$(col_min 2 "$OUT")
mibs() { awk -v s="$1" -v t="$2" 'BEGIN { printf "%.0f", s / t }'; }
ALL=$((SIZE_MIB + 80))
printf '\n== whole-qube restore (%s MiB of volumes, %s cores, best of %s)\n' "$ALL" "$(nproc)" "$ROUNDS"
printf '%-60s %9s %8s\n' "what" "seconds" "MiB/s"
printf '%-60s %9s %8s\n' "restore-qubes: 2 qubes, 3 volumes through qvm-volume import" "$T_WHOLE" "$(mibs "$ALL" "$T_WHOLE")" \
    "restore of the ${SIZE_MIB} MiB volume alone to a file" "$T_PLAIN" "$(mibs "$SIZE_MIB" "$T_PLAIN")"
