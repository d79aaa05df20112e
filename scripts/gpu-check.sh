#!/usr/bin/env bash
# The H200 check of issue 7, in one call on the GPU machine (docs/PERFORMANCE.md, "GPU check").
# Prepare here with scripts/gpu-pack.sh, then with the device tool, from the repository root:
#   run(command="bash scripts/gpu-check.sh", carry=[".gpu-carry"], timeout_s=540)
#
# Stages, each under its own timeout, all output into $OUT/gpu-check.log (and a summary table at
# the end of stdout); a stage that fails is reported and the next one runs:
#   setup     unpack .gpu-carry/fjord-gpu.tar.xz, point OPAL_PREFIX and LD_LIBRARY_PATH at it, find
#             cuBLAS(Lt) and NCCL on the machine, nvidia-smi
#   tests     every GPU test binary (tests/cuda/*)
#   kernels   build-gpu/bin/cuda_ops_bench: each op at GPT-2 124M shapes vs a measured copy
#   step      GPT-2 124M (12 layers, 12 heads, 768, seq 1024, vocab 50257) `fjord train` on random
#             (with its J/token from NVML over the last window of 4 steps)
#             tokens at the largest micro-batch of FJORD_GPU_BATCHES that fits, in bf16 mixed
#             precision (model.dtype AUTO on a GPU): ms/step, tokens/s, MFU; then the same step
#             with the tensor-core attention kernels (model.attention: TENSOR_CORE)
#   torch     tests/bench/torch_gpu_step.py at the same micro-batch: bf16 autocast, fused AdamW, SDPA,
#             eager and torch.compile; measured copy and cuBLAS bf16 matmul ceilings
#   loss      one fjord step at lr 1e-30 (weights unchanged to fp32 precision) with validation on
#             fixed batches, in model.dtype FP32 and BF16, `fjord export`, and PyTorch's loss on the
#             exported weights and the same tokens (fp32 and bf16 autocast)
#   llama     `fjord train` steps of Llama 3.2 1B and of Llama 3.1 8B's layer shapes (fewer layers),
#             random weights and tokens, bf16, seq 2048; in what the budget leaves
#   zero3     all of Llama 3.1 8B (vocab 128256) at parallel.zero_stage 3 over 2 ranks sharing the
#             GPU (MPI backend), recompute BLOCK, the largest micro-batch the plan admits; last
# Stops starting stages after FJORD_GPU_BUDGET seconds (default 420), and cuts every stage's timeout
# so that none runs past FJORD_GPU_DEADLINE seconds (default 500): the call (540 s at most, less when
# the machine's start-up ate into the device time) still prints the summary.
# FJORD_GPU_SKIP="step torch loss" leaves stages out (a dry run of the rest on a machine without a GPU).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
OUT=${OUT:-$repo/gpu-check-out}
mkdir -p "$OUT"
log=$OUT/gpu-check.log
last=/tmp/gpu-check-stage.txt  # the output of the last stage
: >"$log"
budget=${FJORD_GPU_BUDGET:-420}
deadline=${FJORD_GPU_DEADLINE:-500}
batches=${FJORD_GPU_BATCHES:-"64 32 16 8 4"}
start=$(date +%s)
declare -a summary
note() { echo "gpu-check: $*" | tee -a "$log"; }
add() { summary+=("$1"); note "$1"; }
elapsed() { echo $(($(date +%s) - start)); }
# stage NAME SECONDS CMD...: runs CMD with a timeout, output appended to the log.
stage() {
  local name=$1 secs=$2
  shift 2
  local key=${name%% *}
  case " ${FJORD_GPU_SKIP:-} " in *" ${key%:} "*) add "$name: skipped (FJORD_GPU_SKIP)"; return 98 ;; esac
  if [ "$(elapsed)" -ge "$budget" ]; then add "$name: skipped (budget of ${budget}s spent)"; return 99; fi
  # The timeout, and the 5 s to KILL after it, end by the deadline.
  local left=$((deadline - $(elapsed) - 5))
  if [ "$left" -lt 10 ]; then add "$name: skipped (deadline of ${deadline}s near)"; return 99; fi
  [ "$secs" -le "$left" ] || secs=$left
  note "=== $name (timeout ${secs}s, at $(elapsed)s) ==="
  local t0=$SECONDS
  timeout --kill-after=5 "$secs" "$@" >"$last" 2>&1
  local rc=$?
  cat "$last" >>"$log"
  # 124: ended by TERM at the timeout; 137 after the timeout: by the KILL 5 s later (before it, a
  # KILL from elsewhere, e.g. the kernel's out-of-memory killer).
  if [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $((SECONDS - t0)) -ge "$secs" ]; }; then
    note "$name: TIMED OUT after ${secs}s"
  fi
  return $rc
}

# --- setup -------------------------------------------------------------------------------------------
[ -f .gpu-carry/fjord-gpu.tar.xz ] || { note "no .gpu-carry/fjord-gpu.tar.xz: run scripts/gpu-pack.sh here first"; exit 1; }
tar -xJf .gpu-carry/fjord-gpu.tar.xz -C "$repo" || { note "cannot unpack the pack"; exit 1; }
# shellcheck disable=SC1091
. .gpu-carry/pack.env
note "pack: commit $FJORD_PACK_COMMIT, built in $FJORD_PACK_REPO; running in $repo"
# The tests hold the build's absolute paths (fjord, mpiexec): make that path lead here.
if [ "$FJORD_PACK_REPO" != "$repo" ] && [ ! -e "$FJORD_PACK_REPO" ]; then
  mkdir -p "$(dirname "$FJORD_PACK_REPO")" && ln -s "$repo" "$FJORD_PACK_REPO"
fi
ompi=$repo/.gpu-carry/ompi/usr
find_lib_dir() {  # the directory of the first $1 in the usual places, then anywhere (60 s at most)
  local d nvcc_root=""
  command -v nvcc >/dev/null && nvcc_root=$(dirname "$(dirname "$(command -v nvcc)")")
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           ${nvcc_root:+"$nvcc_root/lib64" "$nvcc_root/lib"} /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/$1" ] && { echo "$d"; return; }
  done
  d=$(timeout 60 find / -xdev -name "$1" -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$d" ] && dirname "$d"
}
# The machine's own libstdc++ when it is at least as new as the one we built with (GCC 12): the
# CUDA libraries found there may need its newer symbols.
sys_stdcxx=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')
if [ -n "$sys_stdcxx" ] && grep -qa GLIBCXX_3.4.30 "$sys_stdcxx"; then
  rm -f .gpu-carry/lib/libstdc++.so.6 .gpu-carry/lib/libgcc_s.so.1
fi
cublas_dir=$(find_lib_dir libcublasLt.so.13)
nccl_dir=$(find_lib_dir libnccl.so.2)
note "cuBLASLt from ${cublas_dir:-NOT FOUND}, NCCL from ${nccl_dir:-NOT FOUND}"
fjord_ld=$repo/.gpu-carry/lib:$ompi/lib/x86_64-linux-gnu:$ompi/lib/x86_64-linux-gnu/openmpi/lib:${cublas_dir}:${nccl_dir}
# Only fjord's processes get the carried libraries: PyTorch keeps the machine's own.
fjord_env=(env "LD_LIBRARY_PATH=$fjord_ld" "OPAL_PREFIX=$ompi" "PMIX_INSTALL_PREFIX=$ompi/lib/x86_64-linux-gnu/pmix2"
           "PATH=$ompi/bin:$PATH" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
           OMPI_MCA_btl=self,vader,tcp OMPI_MCA_pml=ob1 OMPI_MCA_osc=pt2pt OMPI_MCA_mtl=^ofi,psm,psm2
           OMPI_MCA_mca_base_component_show_load_errors=0 OMP_NUM_THREADS=4)
bin=$repo/build-gpu/bin
stage nvidia-smi 20 nvidia-smi
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
add "gpu: ${gpu:-nvidia-smi failed}"
if "${fjord_env[@]}" ldd "$bin/fjord" | grep -q "not found"; then
  "${fjord_env[@]}" ldd "$bin/fjord" | grep "not found" | tee -a "$log"
  add "setup: fjord misses shared libraries (above)"
fi
stage mpirun 30 "${fjord_env[@]}" "$ompi/bin/orterun" -np 2 --oversubscribe --bind-to none hostname &&
  add "setup: carried Open MPI runs" || add "setup: carried Open MPI FAILED (np=2 tests will fail)"

# --- tests -------------------------------------------------------------------------------------------
# Some GPU tests use FJORD_TEST_HOOK, which fjord refuses unless the node's settings allow test
# overrides (docs/SOVEREIGNTY.md, "Test overrides"): enable them for the tests, as CTest's fixture does.
overrides_state=$(mktemp -d /tmp/fjord-overrides.XXXXXX)
if bash scripts/test-overrides.sh up /etc/fjord "$overrides_state" >>"$log" 2>&1; then
  add "setup: test overrides enabled for the tests"
else
  add "setup: test overrides NOT enabled (not root?): tests using FJORD_TEST_HOOK will be refused"
fi
for t in $FJORD_PACK_TESTS; do
  stage "test $t" 150 "${fjord_env[@]}" OMP_NUM_THREADS=1 "$bin/$t"
  rc=$?
  res=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?' "$last" | sed 's/listed below://' | tr -s ' \n' ' ')
  add "test $t: rc $rc ${res}"
done
bash scripts/test-overrides.sh down /etc/fjord "$overrides_state" >>"$log" 2>&1

# --- kernels -----------------------------------------------------------------------------------------
stage kernels 90 "${fjord_env[@]}" "$bin/cuda_ops_bench" --batch 8 --seq 1024 --reps 20
rc=$?
if [ $rc -ne 98 ]; then
  add "kernels: rc $rc"
  # The table: the copy ceiling's line to the JSON line, and a fatal error's line wherever it is.
  while IFS= read -r line; do summary+=("  $line"); done < <(sed -n -e '/^cuda_ops_bench: B/,/^cuda_ops_bench_json/{/^cuda_ops_bench_json/!p;b' -e '}' -e '/^fjord: FATAL/p' "$last")
fi

# --- GPT-2 124M training step ------------------------------------------------------------------------
work=$(mktemp -d /tmp/fjord-gpu.XXXXXX)
python3 - "$work/tokens.bin" <<'EOF'
import struct, sys, random
random.seed(1337)
n = 1 << 21  # 2M tokens: enough windows of 1025 for any batch below
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(50257) for _ in range(n))))
EOF
job() {  # job B STEPS LR EXTRA...: a GPT-2 124M job spec on the random shard
  cat <<EOF
model { n_layer: 12 n_head: 12 n_embd: 768 seq_len: 1024 vocab_size: 50257 }
train { micro_batch: $1 steps: $2 lr: $3 warmup_steps: 0 log_every: 1 }
device: CUDA
data { train: "$work/tokens.bin" }
energy { window_steps: 4 }
$4
EOF
}
# The energy of the run's last window (steps 5..8: NVML's counter of the GPU, loaded by dlopen
# from the driver's libnvidia-ml.so.1; docs/PERFORMANCE.md "Energy"), or why there is none.
energy_line() {
  python3 -c '
import json, sys
w = [m for m in map(json.loads, open(sys.argv[1])) if "energy_from_step" in m]
if not w:
    print("no energy window closed")
    sys.exit()
m = w[-1]
if "j_per_token" in m and m.get("energy_measured_ranks") == m.get("energy_ranks"):
    print("%.4g J/token, %.0f W, %.1f J over steps %d..%d (NVML)"
          % (m["j_per_token"], m["avg_power_w"], m["energy_j"], m["energy_from_step"], m["step"]))
else:
    print("not measured (the log has the fjord train: energy: lines saying why)")' "$1"
}
# Median ms of steps 3..8 of a run's metrics.jsonl (1-2: allocator, cuBLASLt heuristics, first
# touch of the data).
median_ms() {
  python3 -c 'import json,sys,statistics; l=[json.loads(x)["ms"] for x in open(sys.argv[1])][2:]; print(statistics.median(l))' "$1"
}
best_b=0 best_ms=0
case " ${FJORD_GPU_SKIP:-} " in *" step "*) batches="" && add "step: skipped (FJORD_GPU_SKIP)" ;; esac
for b in $batches; do
  job "$b" 8 6e-4 "" >"$work/job_$b.textproto"
  if stage "step B=$b" 120 "${fjord_env[@]}" "$bin/fjord" train "$work/job_$b.textproto" --set run_dir="$work/run_$b"; then
    best_b=$b
    best_ms=$(median_ms "$work/run_$b/metrics.jsonl")
    cp "$work/run_$b/metrics.jsonl" "$OUT/step_metrics.jsonl"
    break
  fi
done
if [ "$best_b" -gt 0 ]; then
  # FLOPs per token as llm.c counts them: 6 N for the matmuls of forward + backward, plus 6 L T C
  # for attention (QK^T and PV, forward and backward); peak: 989 TFLOP/s dense bf16 (datasheet).
  read -r tok_s mfu <<<"$(python3 -c "
N=124475904; L=12; T=1024; C=768; ms=$best_ms; B=$best_b
tok=B*T/(ms/1000); flops=6*N+6*L*T*C
print(f'{tok:.0f} {100*tok*flops/989e12:.1f}')")"
  add "step: fjord GPT-2 124M bf16, micro-batch $best_b: $best_ms ms/step, $tok_s tokens/s, MFU $mfu% of 989 TFLOP/s"
  add "step energy: $(energy_line "$work/run_$best_b/metrics.jsonl") beside $tok_s tokens/s"
  # The same step with the tensor-core attention kernels (model.attention: TENSOR_CORE), which
  # ATTENTION_AUTO selects once their tests pass here and this row is faster.
  if stage "step tensor-core attention B=$best_b" 120 "${fjord_env[@]}" "$bin/fjord" train "$work/job_$best_b.textproto" \
       --set run_dir="$work/run_tc" --set model.attention=TENSOR_CORE; then
    tc_ms=$(median_ms "$work/run_tc/metrics.jsonl")
    add "step: same with model.attention: TENSOR_CORE: $tc_ms ms/step ($(python3 -c "print(f'{$best_ms/$tc_ms:.2f}')")x the SIMT step)"
  fi
elif [ -n "$batches" ]; then
  add "step: no micro-batch of [$batches] ran (see the log)"
fi

# --- PyTorch -----------------------------------------------------------------------------------------
tb=${best_b:-8}
[ "$tb" -gt 0 ] || tb=8
stage torch 200 env PYTHONUNBUFFERED=1 python3 tests/bench/torch_gpu_step.py --batch "$tb" --steps 8 --warmup 3 --ceilings \
  --modes eager,compile
rc=$?
if [ $rc -ne 98 ]; then
  add "torch: rc $rc"
  while IFS= read -r line; do summary+=("  $line"); done < <(grep -E '^torch_gpu_step: (torch|ceilings|mode)' "$last")
fi

# --- loss on identical weights and tokens --------------------------------------------------------------
# The validation shard by --set: a second `data { }` block is a parse error (data is not repeated).
job 4 1 1e-30 "" >"$work/job_loss.textproto"
if [[ " ${FJORD_GPU_SKIP:-} " == *" loss "* ]]; then
  add "loss: skipped (FJORD_GPU_SKIP)"
else
  ours=""
  for dtype in FP32 BF16; do
    if stage "loss: fjord $dtype" 120 "${fjord_env[@]}" "$bin/fjord" train "$work/job_loss.textproto" \
         --set run_dir="$work/loss_$dtype" --set data.val="$work/tokens.bin" --set model.dtype=$dtype --set train.eval_every=1 \
         --set train.eval_batches=2 --set train.weight_decay=0; then
      ours+=" $dtype $(python3 -c 'import json,sys; print([json.loads(x) for x in open(sys.argv[1])][-1]["val_loss"])' "$work/loss_$dtype/metrics.jsonl")"
    else
      ours+=" $dtype failed"
    fi
  done
  if stage "loss: export" 60 "${fjord_env[@]}" "$bin/fjord" export --checkpoint "$work/loss_FP32/checkpoints" \
       --out "$work/export"; then
    if stage "loss: torch" 90 env PYTHONUNBUFFERED=1 python3 tests/bench/torch_gpu_step.py --loss "$work/export" \
         --tokens "$work/tokens.bin" --batch 4 --seq-len 1024 --eval-batches 2; then
      theirs=$(grep -E '^torch_gpu_step: loss of' "$last" | tail -1 | sed 's/.*: //')
    else
      theirs="failed (see the log)"
    fi
    add "loss: fjord (GPU)$ours; torch $theirs"
  else
    add "loss: fjord$ours; export failed (see the log)"
  fi
fi
# --- Llama-family training steps ------------------------------------------------------------------------
# Last, so that it runs only in the time the GPT-2 stages left (FJORD_GPU_BUDGET).
# Random weights of the real shapes, bf16 mixed precision, random tokens, seq 2048, micro-batch 1
# (then 2 if it fits). Both use vocab 65536 (uint16 shards; the zero3 stage below uses the real
# 128256 from a version-2 shard). Llama 3.1 8B (7.25e9 parameters with this vocabulary) with fp32
# master weights, gradients and AdamW state needs 16 bytes a parameter, 108 GiB before activations,
# on one rank: this stage times the 8B layer shapes with the most layers of FJORD_GPU_8B_LAYERS
# (default 16, then 8: about 64 and 37 GiB of state) that fit; the zero3 stage runs all of it.
llama_model() {  # llama_model LAYERS HEADS KV EMBD INTERMEDIATE THETA TIED
  cat <<EOF
model { arch: LLAMA n_layer: $1 n_head: $2 n_kv_head: $3 n_embd: $4 intermediate_size: $5 seq_len: 2048
        vocab_size: 65536 rms_norm_eps: 1e-5 rope_theta: $6 tie_embeddings: $7
        rope_scaling { rope_type: LLAMA3 factor: 32 low_freq_factor: 1 high_freq_factor: 4
                       original_max_position_embeddings: 8192 } }
EOF
}
# llama_step NAME MODEL: micro-batches 1, 2 until one fails; reports the largest that ran.
llama_step() {
  local name=$1 model=$2 b ok=0 ms=0 run
  for b in 1 2; do
    llama_runs=$((llama_runs + 1))
    run=$work/llama_$llama_runs
    { echo "$model"
      echo "train { micro_batch: $b steps: 8 lr: 1e-5 warmup_steps: 0 log_every: 1 }"
      echo "device: CUDA"
      echo "data { train: \"$work/tokens_llama.bin\" }"; } >"$work/llama.textproto"
    if stage "llama $name B=$b" 100 "${fjord_env[@]}" "$bin/fjord" train "$work/llama.textproto" \
         --set run_dir="$run"; then
      ok=$b
      ms=$(median_ms "$run/metrics.jsonl")
    else
      break
    fi
  done
  if [ "$ok" -gt 0 ]; then
    add "llama: $name, bf16, vocab 65536, micro-batch $ok x 2048: $ms ms/step, $(python3 -c "print(f'{$ok*2048/($ms/1000):.0f}')") tokens/s"
    return 0
  fi
  add "llama: $name: no micro-batch ran (see the log)"
  return 1
}
llama_runs=0
case " ${FJORD_GPU_SKIP:-} " in
  *" llama "*) add "llama: skipped (FJORD_GPU_SKIP)" ;;
  *)
    python3 - "$work/tokens_llama.bin" <<'EOF'
import struct, sys, random
random.seed(1337)
n = 1 << 16  # 32 windows of 2049: every micro-batch below, reused each step
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(65536) for _ in range(n))))
EOF
    llama_step "Llama 3.2 1B (16 layers, 2048, GQA 32:8, SwiGLU 8192, tied)" "$(llama_model 16 32 8 2048 8192 500000 true)"
    for layers in ${FJORD_GPU_8B_LAYERS:-16 8}; do
      llama_step "Llama 3.1 8B shapes, $layers of its 32 layers (4096, GQA 32:8, SwiGLU 14336)" \
        "$(llama_model "$layers" 32 8 4096 14336 500000 false)" && break
    done
    ;;
esac

# --- ZeRO-3: all of Llama 3.1 8B --------------------------------------------------------------------
# Issue 19: the whole 8B (32 layers, its real vocabulary of 128256 in a version-2 uint32 shard) with
# parameters, gradients and AdamW state sharded (parallel.zero_stage: 3) over 2 ranks that share
# this one GPU through the MPI backend (NCCL refuses two ranks on one GPU; MPI stages through host
# memory), train.recompute: BLOCK, bf16, seq 2048. Micro-batch: the largest of 4, 2, 1 whose plan
# (`fjord plan --ranks 2 --device h200`, per rank) fits twice in the GPU, tried for real, smaller
# ones after a failure. It times the gathers and reduce-scatters of a real shape; the step is not a
# scaling figure (both ranks share one GPU and talk through host memory).
zero3_model() {
  cat <<EOF
model { arch: LLAMA n_layer: 32 n_head: 32 n_kv_head: 8 n_embd: 4096 intermediate_size: 14336 seq_len: 2048
        vocab_size: 128256 rms_norm_eps: 1e-5 rope_theta: 500000 tie_embeddings: false
        rope_scaling { rope_type: LLAMA3 factor: 8 low_freq_factor: 1 high_freq_factor: 4
                       original_max_position_embeddings: 8192 } }
parallel { zero_stage: 3 comm_backend: MPI }
device: CUDA
EOF
}
case " ${FJORD_GPU_SKIP:-} " in
  *" zero3 "*) add "zero3: skipped (FJORD_GPU_SKIP)" ;;
  *)
    python3 - "$work/tokens_v2.bin" <<'EOF'
import struct, sys, random
random.seed(1337)
n = 1 << 16
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 2, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}I", *(random.randrange(128256) for _ in range(n))))
EOF
    gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
    gpu_bytes=$(( ${gpu_mib:-0} * 1024 * 1024 ))
    zero3_ok=0
    for b in 4 2 1; do
      { zero3_model
        echo "train { micro_batch: $b steps: 6 lr: 1e-5 warmup_steps: 0 log_every: 1 recompute: BLOCK }"
        echo "data { train: \"$work/tokens_v2.bin\" }"; } >"$work/zero3.textproto"
      total=$("${fjord_env[@]}" "$bin/fjord" plan "$work/zero3.textproto" --ranks 2 --device h200 2>/dev/null |
              awk '$1 == "total" {print $2}')
      if [ -z "$total" ] || [ $((2 * total)) -gt "$gpu_bytes" ]; then
        note "zero3: B=$b: plan ${total:-?} bytes a rank x 2 ranks exceeds the GPU's $gpu_bytes"
        continue
      fi
      if stage "zero3 8B B=$b" 240 "${fjord_env[@]}" "$ompi/bin/orterun" -np 2 --oversubscribe --bind-to none \
           "$bin/fjord" train "$work/zero3.textproto" --set run_dir="$work/zero3_$b"; then
        ms=$(median_ms "$work/zero3_$b/metrics.jsonl")
        comm=$(python3 -c 'import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
print(f"{statistics.median(r["exposed_comm_ms"] for r in rows):.0f}")' "$work/zero3_$b/metrics.jsonl")
        add "zero3: Llama 3.1 8B (32 layers, vocab 128256), ZeRO-3 over 2 ranks sharing the GPU (MPI), recompute BLOCK, bf16, micro-batch $b x 2048: $ms ms/step, exposed comm $comm ms, plan $((total >> 30)) GiB a rank"
        zero3_ok=1
        break
      fi
    done
    [ $zero3_ok -eq 1 ] || add "zero3: Llama 3.1 8B at ZeRO-3 did not run (see the log)"
    ;;
esac

rm -rf "$work"

note "=== summary (${SECONDS}s) ==="
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
