#!/usr/bin/env bash
# The README's journeys end to end, as a new user runs them (CTest: journeys): quick start, two
# ranks, interrupt and resume, the sovereign cluster on one node, bench, export/import. Each step
# checks its result against an independent oracle where there is one (the uninterrupted run for the
# resumed one, the original checkpoint's loss for its exports), and stops at the first failure,
# naming the journey. Small settings (a few steps) keep it under two minutes on 2 cores.
# Usage: scripts/journeys.sh FJORD_BINARY MPIEXEC [WORK_DIR]
set -euo pipefail
fjord=$1
mpiexec=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${3:-$(mktemp -d /tmp/fjord-journeys.XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp OMP_NUM_THREADS=1
mpirun=("$mpiexec" -np 2 --oversubscribe --bind-to none)
journey=""
fail() {
  echo "journeys: FAILED in '$journey': $*" >&2
  exit 1
}
step() {
  journey=$1
  echo "journeys: $journey" >&2
}
# The "loss" values of a metrics.jsonl, one per line, as printed.
losses() { grep -o '"loss": [^,]*' "$1" | cut -d' ' -f2; }
# The loss of `fjord eval`'s JSON line.
eval_loss() { "$fjord" eval "$@" 2>/dev/null | grep -o '"loss": [^,]*' | cut -d' ' -f2; }

step "quick start"
for i in $(seq 1 400); do echo "ROMEO: the fjord keeps its data home, line $i"; done >my.txt
"$fjord" prep --input my.txt --out data/my --val-fraction 0.1 >/dev/null
quick=("$repo/examples/shakespeare-char/job.textproto" --set "data.train=data/my/train_*.bin"
  --set "data.val=data/my/val_*.bin" --set train.steps=10 --set train.eval_every=5 --set train.eval_batches=2
  --set train.log_every=1 --set train.micro_batch=4 --set checkpoint.every_steps=5)
"$fjord" train "${quick[@]}" --set run_dir=runs/my --quiet || fail "train exited $?"
[ "$(losses runs/my/metrics.jsonl | wc -l)" = 10 ] || fail "metrics.jsonl has not 10 steps"
"$fjord" eval --checkpoint runs/my --data 'data/my/val_*.bin' --batches 2 >eval.txt 2>eval.err || fail "eval"
grep -q '"micro_batch": 4, "seq_len": 64' eval.txt || fail "eval line: $(cat eval.txt)"
grep -q "checkpoint runs/my/checkpoints/step_000010 (step 10" eval.err || fail "eval: $(cat eval.err)"
# (to a file, not a pipe into grep -q: under pipefail, grep's early exit would fail fjord with SIGPIPE)
"$fjord" sample --checkpoint runs/my --prompt "ROMEO:" --tokens 20 --temperature 0.8 >sample.txt 2>/dev/null ||
  fail "sample exited $?"
grep -q '^ROMEO:' sample.txt || fail "sample: $(head -c 200 sample.txt)"
# A second run into the same run_dir is refused; --overwrite replaces it.
if "$fjord" train "${quick[@]}" --set run_dir=runs/my --quiet 2>refused.txt; then fail "rerun not refused"; fi
grep -q -- "--overwrite" refused.txt || fail "refusal: $(cat refused.txt)"

step "two ranks"
"${mpirun[@]}" "$fjord" train "${quick[@]}" --set run_dir=runs/two --set train.global_batch=8 --quiet ||
  fail "mpirun -np 2 train"
[ "$(losses runs/two/metrics.jsonl | wc -l)" = 10 ] || fail "2-rank metrics"

step "interrupt and resume"
FJORD_TEST_HOOK=signal_after_step=5 "$fjord" train "${quick[@]}" --set run_dir=runs/resumed >stopped.txt 2>&1 ||
  fail "the interrupted run exited $?: $(tail -3 stopped.txt)"
grep -q "stopped by a signal after step 5; checkpoint runs/resumed/checkpoints/step_000005 is complete" stopped.txt ||
  fail "stop line: $(tail -3 stopped.txt)"
"$fjord" train "${quick[@]}" --set run_dir=runs/resumed --resume --quiet || fail "--resume"
[ "$(losses runs/resumed/metrics.jsonl)" = "$(losses runs/my/metrics.jsonl)" ] ||
  fail "the resumed run's losses differ from the uninterrupted run's"

step "export/import"
trained=$(eval_loss --checkpoint runs/my --data 'data/my/val_*.bin' --batches 2)
for format in hf llmc; do
  "$fjord" export --checkpoint runs/my --out "exported.$format" --format "$format" >/dev/null || fail "export $format"
  "$fjord" import --from "exported.$format" --out "imported.$format" >/dev/null || fail "import $format"
  [ "$(eval_loss --checkpoint "imported.$format" --data 'data/my/val_*.bin' --batches 2 --micro-batch 4 --seq-len 64)" = \
    "$trained" ] || fail "$format: the imported weights give another loss than $trained"
done

step "the sovereign cluster (one node)"
# The launch plan of the example: a dry run prints it and writes nothing.
"$fjord" launch "$repo/examples/sovereign-cluster/job.textproto" \
  --inventory "$repo/examples/sovereign-cluster/inventory.textproto" --np 2 --dry-run >plan.txt 2>&1 || true
grep -q "2 ranks on 2 nodes" plan.txt || fail "launch --dry-run: $(cat plan.txt)"
grep -q "nothing was written or started" plan.txt || fail "launch --dry-run wrote something: $(tail -2 plan.txt)"
[ ! -e runs/acme ] || fail "launch --dry-run wrote runs/acme: $(find runs/acme)"
# This node as a Norwegian one (the test override FJORD_NODE_IDENTITY, enabled by the operator).
printf 'hostname: "%s"\njurisdiction: "NO"\nsite: "osl1"\n' "$(hostname -s)" >node.textproto
export FJORD_NODE_IDENTITY=$work/node.textproto
"$fjord" prep --input my.txt --out data/acme --tenant acme --jurisdiction NO >/dev/null || fail "prep --tenant"
mkdir -p -m 700 keys && openssl rand -hex 32 >keys/acme.key && chmod 600 keys/acme.key
"$fjord" train "$repo/examples/sovereign-cluster/job.textproto" --set train.steps=4 \
  --set checkpoint.every_steps=2 --quiet || fail "tenant train"
head -c 8 runs/acme/checkpoints/step_000004/model.bin | grep -q FJSEALED || fail "the checkpoint is not sealed"
"$fjord" audit verify runs/acme/audit.jsonl >verify.txt || fail "audit verify: $(cat verify.txt)"
# Outside the residency the checkpoint does not open.
printf 'hostname: "%s"\njurisdiction: "SE"\nsite: "sto1"\n' "$(hostname -s)" >se.textproto
if FJORD_NODE_IDENTITY=$work/se.textproto "$fjord" eval --checkpoint runs/acme --data 'data/acme/val_*.bin' \
  --key keys/acme.key >se.txt 2>&1; then
  fail "a Swedish node opened acme's checkpoint"
fi
unset FJORD_NODE_IDENTITY

step "bench"
"${mpirun[@]}" "$fjord" bench all_reduce_perf -b 8 -e 4K -f 8 -n 2 -w 1 >bench.txt || fail "bench: $(cat bench.txt)"
grep -q "Out of bounds values : 0 OK" bench.txt || fail "bench found wrong elements: $(cat bench.txt)"
[ "$(grep -cE '^ +[0-9]+ +[0-9]+ +float +sum' bench.txt)" = 4 ] || fail "bench: not 4 sizes: $(cat bench.txt)"

echo "journeys: all passed" >&2
