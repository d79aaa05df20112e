#!/usr/bin/env bash
# scripts/check-layers.sh must fail on a back-edge: in a copy of the tree, common/status.h (the
# bottom library) gets an include of launcher/launch.h (the top one). The unmodified copy must pass,
# so the failure is the edit's; the message must name the file, the line the edit added and both
# libraries.
set -euo pipefail
root="$1" build="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$root" && tar cf - --exclude='./build*' --exclude=./.git .) | (cd "$tmp" && tar xf -)
if ! out="$(bash "$root/scripts/check-layers.sh" "$build" "$tmp" 2>&1)"; then
  echo "FAIL: the unmodified copy does not pass:"; echo "$out"; exit 1
fi
line=$(($(wc -l <"$tmp/common/status.h") + 1))
echo '#include "launcher/launch.h"' >>"$tmp/common/status.h"
if out="$(bash "$root/scripts/check-layers.sh" "$build" "$tmp" 2>&1)"; then
  echo "FAIL: a back-edge from fjord_common to fjord_launch passed:"; echo "$out"; exit 1
fi
want="common/status.h:$line: includes \"launcher/launch.h\" of fjord_launch, but fjord_common does not depend on it"
if ! grep -qF "$want" <<<"$out"; then
  echo "FAIL: the message does not say: $want"; echo "$out"; exit 1
fi
echo "ok: the back-edge was refused: $want"
