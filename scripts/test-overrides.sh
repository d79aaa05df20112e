#!/usr/bin/env bash
# Enables the test overrides (FJORD_NODE_IDENTITY, FJORD_TEST_HOOK) on this machine for a test run, the
# way an operator enables them on a test node (docs/SOVEREIGNTY.md, "Test overrides"): a root-owned
# SYSCONFDIR/settings.textproto with allow_test_overrides: true. CTest runs it as a fixture around
# every test that uses an override (tests/CMakeLists.txt).
#
#   test-overrides.sh up SYSCONFDIR STATE    write the settings file unless one that enables them exists
#   test-overrides.sh down SYSCONFDIR STATE  remove what `up` made (only that; idempotent)
#
# STATE is a directory this script owns; it remembers there what `up` created. An existing settings
# file that does not enable the overrides is the operator's: `up` refuses to touch it. Needs root
# (the file must be root-owned); elsewhere `up` exits 77 with the reason.
set -euo pipefail

die() { echo "test-overrides: $*" >&2; exit 1; }

[[ $# -eq 3 ]] || die "usage: $0 up|down SYSCONFDIR STATE"
cmd=$1 dir=$2 state=$3
settings=$dir/settings.textproto

case $cmd in
  up)
    if [[ $(id -u) -ne 0 ]]; then
      echo "test-overrides: needs root to write the root-owned $settings; tests that use FJORD_NODE_IDENTITY or FJORD_TEST_HOOK will be refused" >&2
      exit 77
    fi
    mkdir -p "$state"
    if [[ -e $settings ]]; then
      grep -Eq '^[[:space:]]*allow_test_overrides:[[:space:]]*true' "$settings" ||
        die "$settings exists and does not enable test overrides; it is the operator's, so it stays as it is: add allow_test_overrides: true to it on a test node, or run the tests elsewhere"
      echo "test-overrides: $settings already enables test overrides"
      exit 0
    fi
    if [[ ! -d $dir ]]; then
      install -d -m 755 -o root -g root "$dir"
      touch "$state/created-dir"
    fi
    printf '# Written by %s for a test run; removed by its `down`.\nallow_test_overrides: true\n' "$0" >"$state/settings.tmp"
    install -m 644 -o root -g root "$state/settings.tmp" "$settings"
    rm -f "$state/settings.tmp"
    touch "$state/created-settings"
    echo "test-overrides: wrote $settings"
    ;;
  down)
    if [[ -f $state/created-settings ]]; then
      rm -f "$settings" "$state/created-settings"
    fi
    if [[ -f $state/created-dir ]]; then
      rmdir "$dir" 2>/dev/null || echo "test-overrides: left $dir (not empty)" >&2
      rm -f "$state/created-dir"
    fi
    ;;
  *) die "unknown command $cmd (up or down)" ;;
esac
