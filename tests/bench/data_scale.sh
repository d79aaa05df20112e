#!/usr/bin/env bash
# Data at scale (issue 23), by hand: peak memory of training from a large shard set and of fjord
# prep on a large text, each against the same run at a tenth of the size (memory must not grow with
# the data), and tokenizer throughput of fjord prep against Hugging Face `tokenizers` and tiktoken
# on the same text, vocabulary and thread count. Prints tables; peaks from /usr/bin/time -v.
#
# usage: tests/bench/data_scale.sh [--tokens N] [--text-bytes N] [--sample-bytes N] [--threads N]
#                                  [--fjord BIN] [--dir DIR]
#   --tokens N        training shard set size (default 2e9 tokens = 4 GB of uint16 shards)
#   --text-bytes N    prep input size (default 2e9 bytes of generated text)
#   --sample-bytes N  text for the throughput table (default 50e6)
#   --threads N       prep and tokenizer threads (default: the number of cores)
#   --fjord BIN       the fjord binary (default build-cpu/bin/fjord, else build/bin/fjord)
#   --dir DIR         where the generated data goes (default a temporary directory, removed after;
#                     needs about 2 x tokens x 2 bytes + 1.5 x text bytes of space)
# The throughput table uses ${FJORD_PYTHON:-.venv/bin/python} with `tokenizers` (and tiktoken when
# installed); without them it says "skipped". GPT-2's files: ../shared/data/gpt2 or $FJORD_GPT2_DIR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
tokens=2e9 text_bytes=2e9 sample_bytes=50e6 threads=$(nproc) fjord="" dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) tokens=$2; shift 2 ;;
    --text-bytes) text_bytes=$2; shift 2 ;;
    --sample-bytes) sample_bytes=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --fjord) fjord=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done
if [ -z "$fjord" ]; then
  for f in "$repo/build-cpu/bin/fjord" "$repo/build/bin/fjord"; do [ -x "$f" ] && fjord=$f && break; done
fi
[ -x "$fjord" ] || { echo "data_scale: no fjord binary; build first (scripts/build.sh)" >&2; exit 2; }
np_py=/usr/bin/python3  # Debian's python3 with numpy
tok_py=${FJORD_PYTHON:-$repo/.venv/bin/python}
gpt2=${FJORD_GPT2_DIR:-$repo/../shared/data/gpt2}
if [ -z "$dir" ]; then
  dir=$(mktemp -d /tmp/fjord-data-scale.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"
per_shard=50000000  # 100 MB shards

# peak KB and wall seconds of a command, from GNU time
measure() {  # measure NAME CMD...
  /usr/bin/time -v -o "$dir/$1.time" "${@:2}" >"$dir/$1.out" 2>&1 || { cat "$dir/$1.out" >&2; exit 1; }
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/$1.time")
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/$1.time" |
         awk -F: '{ s = 0; for (i = 1; i <= NF; ++i) s = s * 60 + $i; print s }')
  echo "$rss $wall"
}

echo "# fjord data_scale: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, fjord $(git -C "$repo" rev-parse --short HEAD)"

# --- training from shards: the full set and a tenth of it -------------------------------------
small=$(python3 -c "print(int(float('$tokens') / 10))")
"$np_py" "$repo/tests/bench/data_gen.py" shards "$dir/big" "$tokens" $per_shard
"$np_py" "$repo/tests/bench/data_gen.py" shards "$dir/small" "$small" $per_shard
printf '\n| training data | shards | steps | peak RSS (MB) | wall (s) | first step (s) |\n|---|---|---|---|---|---|\n'
for set in small big; do
  cat > "$dir/$set.textproto" <<JOB
model { n_layer: 2 n_head: 2 n_embd: 64 seq_len: 64 vocab_size: 50257 }
train { micro_batch: 4 steps: 40 lr: 1e-4 threads: 1 log_every: 1000 eval_every: 0 tensorboard: false }
data { train: "$dir/$set/train_*.bin" }
run_dir: "$dir/run_$set"
JOB
  read -r rss wall < <(measure "train_$set" env OMP_NUM_THREADS=1 "$fjord" train "$dir/$set.textproto" --quiet)
  first=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).readline())["ms"] / 1e3, 3))' \
          "$dir/run_$set/metrics.jsonl" 2>/dev/null || echo "-")
  n=$(ls "$dir/$set" | wc -l)
  printf '| %s tokens | %d | 40 | %d | %s | %s |\n' "$([ $set = big ] && echo "$tokens" || echo "$small")" "$n" \
    $((rss / 1024)) "$wall" "$first"
done
rm -rf "$dir/big" "$dir/small"

# --- prep of a large text: the full size and a tenth of it ------------------------------------
small_text=$(python3 -c "print(int(float('$text_bytes') / 10))")
"$np_py" "$repo/tests/bench/data_gen.py" text "$dir/big.txt" "$text_bytes"
head -c "$small_text" "$dir/big.txt" > "$dir/small.txt"
tok_flags="--tokenizer gpt2 --vocab $gpt2" tok_name=gpt2
[ -f "$gpt2/vocab.json" ] || { tok_flags="--tokenizer byte"; tok_name=byte; }
printf '\n| prep input | tokenizer | threads | peak RSS (MB) | wall (s) | MB/s |\n|---|---|---|---|---|---|\n'
for set in small big; do
  read -r rss wall < <(measure "prep_$set" "$fjord" prep --input "$dir/$set.txt" --out "$dir/prep_$set" \
                         $tok_flags --threads "$threads" --quiet --val-fraction 0.001)
  bytes=$(stat -c %s "$dir/$set.txt")
  printf '| %s bytes | %s | %s | %d | %s | %.1f |\n' "$bytes" "$tok_name" "$threads" \
    $((rss / 1024)) "$wall" "$(python3 -c "print($bytes / 1e6 / max($wall, 1e-9))")"
  rm -rf "$dir/prep_$set"
done
rm -f "$dir/big.txt" "$dir/small.txt"

# --- tokenizer throughput on one sample, one thread and $threads ------------------------------
"$np_py" "$repo/tests/bench/data_gen.py" text "$dir/sample.txt" "$sample_bytes"
printf '\n| tokenizer (GPT-2 BPE, %s of text) | threads | tokens | seconds | Mtokens/s | vs fjord |\n|---|---|---|---|---|---|\n' \
  "$sample_bytes bytes"
if [ ! -f "$gpt2/vocab.json" ]; then
  echo "| skipped: no GPT-2 files in $gpt2 | | | | | |"
else
  for t in 1 "$threads"; do
    rm -rf "$dir/tp"
    start=$(date +%s.%N)
    "$fjord" prep --input "$dir/sample.txt" --out "$dir/tp" --tokenizer gpt2 --vocab "$gpt2" --threads "$t" \
      --quiet --val-fraction 0 --eot none > "$dir/tp.out"
    end=$(date +%s.%N)
    ftok=$(sed -n 's/.*: \([0-9]*\) train tokens.*/\1/p' "$dir/tp.out")
    fsec=$(python3 -c "print($end - $start)")
    printf '| fjord prep | %s | %s | %.2f | %.3f | 1.00 |\n' "$t" "$ftok" "$fsec" "$(python3 -c "print($ftok / $fsec / 1e6)")"
    if [ -x "$tok_py" ] || command -v "$tok_py" >/dev/null 2>&1; then
      "$tok_py" "$repo/tests/bench/tokenizer_throughput.py" "$gpt2" "$dir/sample.txt" "$t" | while read -r name n sec; do
        if [ "$n" = "skipped:" ]; then echo "| $name $n $sec | $t | | | | |"; continue; fi
        printf '| %s | %s | %s | %.2f | %.3f | %.2f |\n' "$name" "$t" "$n" "$sec" \
          "$(python3 -c "print($n / $sec / 1e6)")" "$(python3 -c "print(($n / $sec) / ($ftok / $fsec))")"
      done
    else
      echo "| skipped: no tokenizers ($tok_py) | $t | | | | |"
    fi
  done
fi
