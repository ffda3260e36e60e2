#!/usr/bin/env bash
# Prints (one line on stdout) a folder holding XGBoost 3.4.1's C library, for
# XGBOOST_LIB_DIR: `libxgboost.so`, a `libxgboost.so.3` symlink and the libgomp
# the library was built against, all taken from PyPI's `xgboost-cpu==3.4.1`
# manylinux wheel (see ../shared/TOOLING.md, "XGBoost": the download takes a
# second, building from source takes 11-15 minutes). Also makes sure libclang
# is installed, which the `xgboost_lib-sys` build script (bindgen) needs.
#
# Idempotent: the folder is cached in
# ${STOCKANOMALY_CACHE:-/var/tmp/stockanomaly}/xgboost-3.4.1/ and a second run
# only prints it. Logs go to stderr. The Makefile and scripts/test.sh call it.
set -euo pipefail

VERSION=3.4.1
CACHE="${STOCKANOMALY_CACHE:-/var/tmp/stockanomaly}"
DIR="$CACHE/xgboost-$VERSION"

log() { printf 'xgboost-lib: %s\n' "$*" >&2; }

apt_install() {
  local sudo=
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

# bindgen (in xgboost_lib-sys's build script) loads libclang.
ensure_libclang() {
  if compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null; then return 0; fi
  log "installing libclang-dev (needed by bindgen in xgboost_lib-sys)"
  apt_install libclang-dev
}

# Debian's python3 comes without pip; `pip download` only fetches a file, so
# the distribution's pip is enough.
ensure_pip() {
  if python3 -m pip --version >/dev/null 2>&1; then return 0; fi
  log "installing python3-pip (to download the xgboost-cpu wheel)"
  apt_install python3-pip
}

# The SONAME-style name of libgomp that libxgboost.so asks for (NEEDED).
needed_gomp() {
  python3 - "$1" <<'EOF'
import struct, sys

# Minimal ELF64 little-endian reader: the DT_NEEDED entries of the dynamic
# section (readelf/objdump may be missing on a fresh machine).
data = open(sys.argv[1], "rb").read()
assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
e_shoff, = struct.unpack_from("<Q", data, 0x28)
e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
for sh in sections:
    if sh[1] != 6:  # SHT_DYNAMIC
        continue
    strtab = sections[sh[6]]
    str_off = strtab[4]
    needed = []
    for off in range(sh[4], sh[4] + sh[5], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            end = data.index(b"\0", str_off + val)
            needed.append(data[str_off + val:end].decode())
    print("\n".join(n for n in needed if "gomp" in n))
EOF
}

check_dir() {
  [ -f "$DIR/libxgboost.so" ] && [ -e "$DIR/libxgboost.so.3" ] || return 1
  local gomp
  gomp="$(needed_gomp "$DIR/libxgboost.so")"
  [ -z "$gomp" ] || [ -e "$DIR/$gomp" ]
}

install_lib() {
  local tmp wheel gomp vendored
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/xgboost-lib.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  ensure_pip
  log "downloading xgboost-cpu==$VERSION from PyPI into $DIR"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_28_x86_64 \
    -d "$tmp/dl" "xgboost-cpu==$VERSION" >&2
  wheel="$(ls "$tmp"/dl/xgboost_cpu-"$VERSION"-*.whl)"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp/x"
  mkdir -p "$tmp/lib"
  cp "$tmp/x/xgboost/lib/libxgboost.so" "$tmp/lib/"
  cp "$tmp"/x/xgboost_cpu.libs/libgomp-*.so.1.0.0 "$tmp/lib/"
  ln -s libxgboost.so "$tmp/lib/libxgboost.so.3"
  gomp="$(needed_gomp "$tmp/lib/libxgboost.so")"
  if [ -n "$gomp" ] && [ ! -e "$tmp/lib/$gomp" ]; then
    vendored="$(basename "$(ls "$tmp"/lib/libgomp-*.so.1.0.0 | head -n 1)")"
    ln -s "$vendored" "$tmp/lib/$gomp"
  fi
  # Swap the folder in whole, so a concurrent or interrupted run never leaves
  # a half-filled one behind.
  mkdir -p "$CACHE"
  rm -rf "$DIR.new"
  mv "$tmp/lib" "$DIR.new"
  rm -rf "$DIR"
  mv "$DIR.new" "$DIR"
}

ensure_libclang
if ! check_dir; then
  install_lib
  if ! check_dir; then
    log "$DIR: libxgboost.so or the libgomp it needs is missing after install"
    exit 1
  fi
fi
printf '%s\n' "$DIR"
