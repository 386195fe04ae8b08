#!/usr/bin/env bash
# Contributor tool: proves that the README's two commands work on a really fresh Debian machine
# that has nothing but Rust. Needs root (debootstrap, mount, chroot) and the network.
#
#   scripts/fresh-root-check.sh [--root DIR] [--base DIR] [--ref REF] [--suite SUITE] [--keep]
#
#   --root DIR   where the fresh root is made (default /var/tmp/dpcoord-fresh-root); it must not
#                exist, or be a previous run's root (it is then removed first)
#   --base DIR   copy this pristine `debootstrap --variant=minbase` tree instead of running
#                debootstrap (saves the download when checking repeatedly); never modified
#   --ref REF    the commit or branch to check (default HEAD), cloned with git from this repo
#   --suite S    the Debian release (default bookworm)
#   --keep       leave the root in place afterwards (default: unmount and delete it)
#
# What it does:
#   1. `debootstrap --variant=minbase <suite>` into DIR (or a copy of --base): Debian's smallest
#      base, no compiler, no cmake, no python, no git, no CA certificates;
#   2. `git clone` of this repository at REF into DIR/root/dpcoord (git runs outside the root);
#   3. mounts /proc, /sys, /dev (with /dev/shm) and binds the Rust toolchain read-only:
#      ~/.rustup and ~/.cargo of the user running this (CARGO_HOME inside is a fresh writable
#      directory, so crates are downloaded as on a fresh machine); copies /etc/resolv.conf and
#      this host's locally added CA certificates (/usr/local/share/ca-certificates: on a network
#      that inspects TLS, cargo and pip need them; the root's own ca-certificates package, which
#      the scripts install, picks them up);
#   4. runs, inside `chroot` as root, with a clean environment (PATH, HOME, CI=true):
#      `scripts/demo.sh`, then `scripts/test.sh`, each under nice, timed;
#   5. writes the full logs and a summary (each command, its exit code and duration, the cargo
#      and ctest summary lines) to DIR.log/ (default /var/tmp/dpcoord-fresh-root.log/) and
#      prints the summary. Exit status: 0 when both commands succeeded.
set -euo pipefail
# The whole script is one compound command, read before it runs: editing this file while a
# check runs (it takes minutes) cannot change what the running check does.
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRESH=/var/tmp/dpcoord-fresh-root
BASE=""
REF=HEAD
SUITE=bookworm
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) FRESH="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --ref) REF="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "fresh-root-check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [[ "$(id -u)" -ne 0 ]]; then
  echo "fresh-root-check: needs root (debootstrap, mount, chroot)" >&2
  exit 1
fi
for tool in debootstrap chroot mount git; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fresh-root-check: $tool not found (apt-get install debootstrap git)" >&2
    exit 1
  fi
done
RUSTUP_DIR="${RUSTUP_HOME:-$HOME/.rustup}"
CARGO_DIR="${CARGO_HOME:-$HOME/.cargo}"
if [[ ! -x "$CARGO_DIR/bin/cargo" || ! -d "$RUSTUP_DIR/toolchains" ]]; then
  echo "fresh-root-check: no rustup toolchain in $CARGO_DIR and $RUSTUP_DIR" >&2
  exit 1
fi
FRESH="$(realpath -m "$FRESH")"
case "$FRESH/" in
  "$ROOT/"*) echo "fresh-root-check: --root must be outside the repository" >&2; exit 1 ;;
esac
LOGS="$FRESH.log"
COMMIT="$(git -C "$ROOT" rev-parse "$REF^{commit}")"

MOUNTS=()
unmount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
cleanup() {
  unmount_all
  if [[ "$KEEP" != 1 && -d "$FRESH" ]]; then
    # Only once nothing is mounted below it any more.
    if ! grep -q " $FRESH/" /proc/mounts; then rm -rf "$FRESH"; fi
  fi
}
trap cleanup EXIT

# A previous run's root: unmount what it left, then remove it.
if [[ -e "$FRESH" ]]; then
  if [[ ! -f "$FRESH/etc/debian_version" ]]; then
    echo "fresh-root-check: $FRESH exists and is not a Debian root: refusing to remove it" >&2
    exit 1
  fi
  grep " $FRESH/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do
    umount -R -l "$m" || true
  done
  # Never delete through a mount that is still there (the Rust toolchain is bound in).
  if grep -q " $FRESH/" /proc/mounts; then
    echo "fresh-root-check: something is still mounted below $FRESH: refusing to remove it" >&2
    exit 1
  fi
  rm -rf "$FRESH"
fi
rm -rf "$LOGS"
mkdir -p "$LOGS"

say() { printf 'fresh-root-check: %s\n' "$*" | tee -a "$LOGS/summary.txt"; }
say "commit $COMMIT ($(git -C "$ROOT" log -1 --format=%s "$COMMIT"))"
say "root $FRESH, logs $LOGS, started $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

T0=$SECONDS
if [[ -n "$BASE" ]]; then
  say "copying the pristine $SUITE base $BASE"
  cp -a "$BASE" "$FRESH"
else
  say "debootstrap --variant=minbase $SUITE"
  nice -n 10 debootstrap --variant=minbase "$SUITE" "$FRESH" http://deb.debian.org/debian \
    >"$LOGS/debootstrap.log" 2>&1
fi
say "base root ready in $((SECONDS - T0))s: $(cat "$FRESH/etc/debian_version"), \
$(chroot "$FRESH" dpkg-query -W -f='.\n' | wc -l) packages; \
present: $(for c in cc g++ cmake make git python3 pkg-config mpirun; do
  chroot "$FRESH" sh -c "command -v $c" >/dev/null 2>&1 && printf '%s ' "$c"; done)(none expected)"

git clone --quiet --no-checkout "$ROOT" "$FRESH/root/dpcoord"
git -C "$FRESH/root/dpcoord" checkout --quiet "$COMMIT"

cp /etc/resolv.conf "$FRESH/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$FRESH/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$FRESH/usr/local/share/ca-certificates/"
  say "copied this host's local CA certificates: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi
mkdir -p "$FRESH/root/.rustup" "$FRESH/root/.cargo" "$FRESH/root/.cargo-home"
mount -t proc proc "$FRESH/proc"; MOUNTS+=("$FRESH/proc")
mount --rbind /sys "$FRESH/sys"; mount --make-rslave "$FRESH/sys"; MOUNTS+=("$FRESH/sys")
mount --rbind /dev "$FRESH/dev"; mount --make-rslave "$FRESH/dev"; MOUNTS+=("$FRESH/dev")
for pair in "$RUSTUP_DIR:/root/.rustup" "$CARGO_DIR:/root/.cargo"; do
  src="${pair%%:*}" dst="$FRESH${pair#*:}"
  mount --bind "$src" "$dst"
  mount -o remount,bind,ro "$dst"
  MOUNTS+=("$dst")
done

# Runs one command in the root as a fresh login would, timed; appends to the summary.
RESULT=0
run_inside() {
  local name="$1" cmd="$2" start rc
  start=$SECONDS
  say "running: $cmd"
  set +e
  nice -n 10 chroot "$FRESH" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 CI=true \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo-home \
    /bin/bash -c "cd /root/dpcoord && $cmd" >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  say "$cmd: exit $rc after $((SECONDS - start))s (log: $LOGS/$name.log)"
  if [[ $rc -ne 0 ]]; then
    RESULT=1
    tail -n 40 "$LOGS/$name.log" | sed 's/^/    /' | tee -a "$LOGS/summary.txt"
  fi
  return 0
}

run_inside demo "scripts/demo.sh"
grep -E '^(setup: (installing|Debian|set-up took)|demo.sh: done|dpcoord .* demo|demo finished)' "$LOGS/demo.log" \
  | sed 's/^/    /' | tee -a "$LOGS/summary.txt" || true
run_inside test "scripts/test.sh"
{
  grep -E '^setup: (installing|set-up took)' "$LOGS/test.log" || true
  grep -E '^test result:' "$LOGS/test.log" || true
  grep -E '^[0-9]+% tests passed|tests did not run|^[[:space:]]+[0-9]+ - .*\((Skipped|Failed)\)' \
    "$LOGS/test.log" || true
  sed -n '/=== summary ===/,$p' "$LOGS/test.log"
} | sed 's/^/    /' | tee -a "$LOGS/summary.txt"
say "done in $((SECONDS - T0))s: $([[ $RESULT -eq 0 ]] && echo 'both commands succeeded' || echo FAILED)"
exit "$RESULT"
}
