#!/usr/bin/env bash
# ctest package_pkgconfig: a C program built the way a non-CMake build uses the installed
# package, `cc app.c $(pkg-config --cflags --libs dpcoord)`, first against the install prefix,
# then against a copy of it elsewhere (the .pc file computes its prefix from its location).
# The consumer is package/consumer/main.c: it prints which libdpcoord it loaded and makes a
# host-path call.
#
#   check_pkgconfig.sh <prefix> <installed library> <version> <cc> <consumer.c> <scratch dir>
set -euo pipefail
if [[ $# -ne 6 ]]; then
  echo "usage: check_pkgconfig.sh <prefix> <library> <version> <cc> <consumer.c> <scratch>" >&2
  exit 2
fi
prefix="$(realpath "$1")" library="$2" version="$3" cc="$4" source="$5" work="$6"
libdir="$(realpath "$(dirname "$library")")"
rel_lib="$(realpath --relative-to="$prefix" "$libdir")"
fail() { echo "check_pkgconfig: FAILED: $*" >&2; exit 1; }
command -v pkg-config >/dev/null || fail "pkg-config not found (apt-get install pkg-config)"
echo "pkg-config $(pkg-config --version)"

# Builds and runs the consumer against the dpcoord.pc under <root>; the library it loaded and
# the header it compiled with must both lie under <root>.
check_against() {
  local root="$1" name="$2"
  # Only this .pc file: nothing from the system's pkg-config directories.
  export PKG_CONFIG_LIBDIR="$root/$rel_lib/pkgconfig"
  unset PKG_CONFIG_PATH
  [[ -f "$PKG_CONFIG_LIBDIR/dpcoord.pc" ]] || fail "no $PKG_CONFIG_LIBDIR/dpcoord.pc"
  if pkg-config --help 2>&1 | grep -q -- '--validate'; then
    pkg-config --validate dpcoord || fail "pkg-config --validate dpcoord"
  fi
  local got
  got="$(pkg-config --modversion dpcoord)"
  [[ "$got" == "$version" ]] || fail "pkg-config --modversion dpcoord = $got, expected $version"
  pkg-config --exists "dpcoord >= $version" || fail "pkg-config --exists 'dpcoord >= $version'"
  if pkg-config --exists "dpcoord > $version"; then fail "claims a version above $version"; fi
  local cflags libs pc_libdir pc_includedir
  cflags="$(pkg-config --cflags dpcoord)"
  libs="$(pkg-config --libs dpcoord)"
  pc_libdir="$(realpath "$(pkg-config --variable=libdir dpcoord)")"
  pc_includedir="$(realpath "$(pkg-config --variable=includedir dpcoord)")"
  echo "$name: --cflags: $cflags"
  echo "$name: --libs:   $libs"
  [[ "$pc_libdir" == "$root/$rel_lib" ]] || fail "libdir=$pc_libdir, expected $root/$rel_lib"
  [[ -f "$pc_includedir/dpcoord.h" ]] || fail "no dpcoord.h in includedir=$pc_includedir"
  [[ "$pc_includedir/" == "$root/"* ]] || fail "includedir=$pc_includedir is outside $root"

  # The documented command line (plus an rpath, so it runs without LD_LIBRARY_PATH).
  # shellcheck disable=SC2086
  "$cc" -std=c99 -Wall -Wextra -Werror -o "$work/$name" "$source" \
    $cflags $libs -Wl,-rpath,"$pc_libdir" -ldl
  local out loaded
  out="$(env -u LD_LIBRARY_PATH "$work/$name")"
  echo "$out"
  loaded="$(sed -n 's/^loaded: //p' <<<"$out")"
  [[ -n "$loaded" ]] || fail "the consumer did not say which library it loaded"
  loaded="$(realpath "$loaded")"
  [[ "$loaded" == "$root/$rel_lib/"* ]] || fail "$name loaded $loaded, not the one under $root"
  grep -q "^dpcoord $version " <<<"$out" || fail "dp_version() is not $version"
}

rm -rf "$work"
mkdir -p "$work"
check_against "$prefix" consumer-installed

# The same files, copied elsewhere: dpcoord.pc must follow.
moved="$work/moved-prefix"
mkdir -p "$moved/$rel_lib/pkgconfig" "$moved/include"
cp -P "$libdir"/libdpcoord.so* "$moved/$rel_lib/"
cp "$libdir/pkgconfig/dpcoord.pc" "$moved/$rel_lib/pkgconfig/"
includedir="$(PKG_CONFIG_LIBDIR="$libdir/pkgconfig" pkg-config --variable=includedir dpcoord)"
rel_inc="$(realpath --relative-to="$prefix" "$includedir")"
mkdir -p "$moved/$rel_inc"
cp "$includedir/dpcoord.h" "$moved/$rel_inc/"
check_against "$(realpath "$moved")" consumer-moved

rm -rf "$work"
echo "check_pkgconfig: OK (installed and moved prefix)"
