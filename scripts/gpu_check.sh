#!/usr/bin/env bash
# The whole GPU validation of kvbench in one command, at most 8 minutes on an H100/H200:
#
#   bash scripts/gpu_check.sh [OUTDIR]      (default OUTDIR: results/gpu-check-<utc>/)
#
# Needs no install and no network: the repository on PYTHONPATH and the machine's python3
# with torch, triton, cuda-bindings, transformers, nvidia-ml-py, psutil, pytest, rich,
# matplotlib and PyYAML. Writes at most 9 files into OUTDIR, each the moment its stage ends
# (so a stage cut short by the deadline keeps every earlier stage's file):
#
#   identity.json   stage 0: `kvbench info --json`, nvidia-smi (-q -d PCIE,CLOCK,MEMORY and
#                   plain), versions (python, torch, triton, CUDA, driver, bindings, cuFile),
#                   which GPUDirect Storage path would run (kvbench.gds.gds_status), the
#                   disk under the nvme dir (df, findmnt), `ulimit -l`
#   stage1-tests.log stage 1: store round trips hbm<->dram<->nvme (tests/test_store.py), a
#                   batched-copy probe (cuMemcpyBatchAsync, both directions), the GPU-marked
#                   tests (compiled Triton kernels against their torch references, a cuFile
#                   round trip hbm->nvme->hbm)
#   transfer.json   stage 2: paged KV bandwidth subset with its same-run ceilings
#   decode.json     stage 3: decode tokens/s, fp16 / fp8_e4m3 / nvfp4 from hbm, dram_prefetch,
#                   dram_zero_copy, nvme
#   accuracy.json   stage 4: the quantize / dequantize kernel-speed cases
#   prefix.json     stage 5: prefix load vs recompute at two prompt lengths
#   e2e.json        stage 6: Llama-3.1-8B (random weights) generating through DynamicCache,
#                   its offloading variant and kvbench's cache (all-HBM, HBM window + DRAM)
#   remote.json     stage 7: two ranks (--ranks 2, gloo): round trips hbm/dram<->remote,
#                   remote->dram, remote->hbm and hbm->remote through pinned host memory
#   run.log         per stage: exit code, duration, the tail of its output (bench logs go here)
#
# A global deadline (GPU_CHECK_DEADLINE_S, default 460 s) bounds the whole run: each stage
# gets min(its cap, time left) through `timeout` (SIGTERM: kvbench then writes the cases it
# finished, marked interrupted). GPU_CHECK_NVME_DIR: the folder on the disk to measure for
# the nvme tier (default: a temp folder under results/tmp/ on the repository's disk, since
# /tmp is often tmpfs; identity.json records which disk it was).
#
# Without a CUDA device (a CPU machine, CI) only stage 0 runs; every GPU stage is recorded
# as skipped with the reason, and runs its exact command as a dry run planned as on a GPU
# (`--dry-run --plan-as-gpu`, `pytest --collect-only`) so that the case selection below
# cannot rot: a stage whose selection matches nothing fails the script.
#
# Exit code: 0 when every stage that ran passed (and every dry run matched); 1 otherwise.
# A failing stage never stops the script; only the deadline does.
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-460}
LOG=$OUT/run.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
if [ -n "${GPU_CHECK_NVME_DIR:-}" ]; then
  NVME_DIR=$GPU_CHECK_NVME_DIR OWN_NVME=0
else
  [ -d "$REPO/results/tmp" ] || OWN_TMP=1
  mkdir -p "$REPO/results/tmp"  # ignored by git
  NVME_DIR=$(mktemp -d "$REPO/results/tmp/gpu-check-nvme.XXXXXX") OWN_NVME=1
fi
cleanup() {
  rm -rf "$WORK"
  if [ "$OWN_NVME" = 1 ]; then rm -rf "$NVME_DIR"; fi
  if [ "${OWN_TMP:-0}" = 1 ]; then rmdir "$REPO/results/tmp" 2>/dev/null; fi
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------ stages
# Everything a stage runs is defined here, once: the real run (with a GPU) and the dry run
# (without one) use exactly these arguments.
#
# Caps (seconds) are estimates for an H100/H200 with a local NVMe disk (not yet measured
# there: retune them from run.log's durations), ordered by value; they add up to the
# deadline, so if early stages use their whole cap the last ones are squeezed, never the
# earlier ones. Decode's includes its per-case tile autotune (up to 6 Triton compiles per
# format on a cold cache; stage 1's tests warm Triton's on-disk cache first).
CAP_IDENTITY=30 CAP_TESTS=90 CAP_TRANSFER=105 CAP_DECODE=85 CAP_ACCURACY=30 CAP_PREFIX=30 CAP_E2E=50
CAP_REMOTE=40

# Stage 1, in this order inside its cap: the quick checks first, the long test run last.
STORE_TESTS=(-q -ra tests/test_store.py)
GPU_TESTS=(-q -ra -m gpu tests)
# The batched-copy probe: one cuMemcpyBatchAsync copy each way, small (it checks the binding
# works and moves the right bytes; stage 2 measures it at full size).
PROBE=(--bench transfer --full --format fp16 --layout layer --samples 3 --warmup 1
       --set transfer.bytes=64MiB
       --cases '^dram->hbm/layer/fp16/batched$' --cases '^hbm->dram/layer/fp16/batched$')

# Stage 2, transfer (fp16 only: the copy paths are format-blind, a page's byte count is
# what matters, and the sweep varies that).
# Sizes: transfer.bytes (every hbm<->dram and hbm->hbm sample) = 1 GiB. hbm->hbm moves
# ~1.5-2.2 TB/s counted once (each byte is read and written), so a 1 GiB sample lasts
# 0.5-0.7 ms and ~5-10 us of launch and event overhead stays <= 2% (at 256 MiB it would be
# 3-8%). The option is shared with host<->device, where 1 GiB at ~55 GB/s (PCIe 5 x16) is
# ~20 ms a sample (>= 256 MiB, ~5 ms, already keeps that overhead < 2%).
# transfer.ceiling_bytes = 1 GiB (the contiguous ceilings, the same size).
# transfer.file_bytes = 256 MiB (the full default): 40-90 ms per cold read at 3-7 GB/s,
# and 32 staging chunks of 8 MiB for nvme->hbm, so the pipeline's fill and drain are ~3%.
# Samples: 6 after 2 warm-ups instead of the full default 10 after 3: a case's setup
# (pinned pools of 2 GiB, random data, verification) costs more than its samples, and a
# per_page sample of 16384 launches runs behind a GPU sleep twice its enqueue time; 56
# cases at 13 runs each would not fit the cap. Every case samples its paired ceiling (and
# fio, for file cases) alternately for transfer.budget_s = 1 s (at least 6 pairs), so a
# case that does not reach +-5% in that second is flagged unstable, not slowed down.
# GPUDirect Storage: nvme->hbm and hbm->nvme through cuFile, layer layout, the deepest
# queue depth (64) only, each paired with the staged pinned pipeline (reads) and the
# file's sequential O_DIRECT read or write; config.gds_path says whether GDS proper or
# cuFile's compatibility mode (POSIX through host bounce buffers) ran.
TRANSFER=(--bench transfer --full --format fp16 --samples 6 --warmup 2
          --set transfer.bytes=1GiB --set transfer.ceiling_bytes=1GiB --set transfer.file_bytes=256MiB
          --cases '^ceiling/'
          --cases '^(dram->hbm|hbm->dram)/(layer|block)/fp16/(per_page|batched|coalesced|triton)$'
          --cases '^dram<->hbm/(layer|block)/'
          --cases '^hbm->hbm/(layer|block)/'
          --cases '^nvme->hbm/(layer|block)/fp16$'
          --cases '^(nvme->hbm|hbm->nvme)/layer/fp16/[0-9]+tok/cufile/qd64$'
          --set transfer.budget_s=1 --set transfer.queue_depths=1,16,64
          --cases '^nvme->dram/layer/fp16/odirect/qd(1|16|64)/cold$'
          --cases '^sweep/[^/]+/(16|256|1024)tok(/|$)')

# Stage 3, decode: one shape per placement. hbm 64 x 8192 (512k tokens: ~69 GB of fp16 KV,
# as many layers as fit stay resident, bandwidth-bound); the tiers below HBM move the
# whole cache every step, so smaller: dram_prefetch 8 x 8192 (8.6 GB a step at fp16),
# dram_zero_copy 4 x 8192, nvme 2 x 8192 (2.1 GB a step read from the disk).
DECODE=(--bench decode --full --format fp16,fp8_e4m3,nvfp4 --samples 6 --warmup 2
        --set decode.budget_s=1 --set decode.hbm.shapes=64x8192 --set decode.dram_prefetch.shapes=8x8192
        --set decode.dram_zero_copy.shapes=4x8192 --set decode.nvme.shapes=2x8192
        --cases '^kernel-check/' --cases '^ceiling/(hbm|h2d)$' --cases '^hbm/'
        --cases '^dram_prefetch/' --cases '^dram_zero_copy/' --cases '^nvme/')

# Stage 4, accuracy: only the kernel-speed cases (1 GiB of fp16 K+V each in a full run),
# every format.
ACCURACY=(--bench accuracy --full --format fp16,bf16,fp8_e4m3,fp8_e4m3_head,fp8_e4m3_token_head,nvfp4,mxfp4
          --cases '^speed/')

# Stage 5, prefix: a chat-sized prompt and a long one (recompute, dram, nvme each). Each
# load is sampled alternately with a recompute of the same tokens (at least 6 pairs), so
# the long prompt is 16k tokens, not 32k (whose recompute would take ~2 s a pair).
PREFIX=(--bench prefix --full --format fp16 --samples 6 --set prefix.budget_s=1
        --set prefix.tokens=4096,16384)

# Stage 6, e2e: Llama-3.1-8B at full size with random weights (made on the GPU: seconds),
# batch 4, 2k prompts, 16 new tokens, each cache paired with DynamicCache for 3 s (at
# least 6 pairs): DynamicCache, its offloading variant, kvbench's cache all-HBM in three
# formats (kvbench's attention: the fused paged-decode kernel) and a 256-token HBM window
# over pinned DRAM. The single-tier dram/nvme caches read every page on the host each
# step (the torch reference): too slow for an 8B model inside this cap.
E2E=(--bench e2e --model Llama-3.1-8B --format fp16,fp8_e4m3,nvfp4 --samples 2 --warmup 1
     --set e2e.batch=4 --set e2e.prompt_tokens=2048 --set e2e.new_tokens=16 --set e2e.budget_s=3
     --set e2e.hot_window=256
     --cases '^(dynamic|dynamic_offload|kvbench/hbm/[^/]+|kvbench/hbm\+dram/fp16)$')

# Stage 7, remote: rank 0 (the GPU) and a second rank on this host holding the pages in its
# host memory (gloo over loopback: the software path, not a NIC). 64 MiB per sample: 1,024
# 64 KiB pages, per_page about 0.15 s a sample (one message latency a page), coalesced
# tens of ms; each paired with the same bytes contiguous (plus the same one H2D or D2H
# copy for the hbm directions) for remote.budget_s = 1 s (at least 6 pairs); two ranks
# start in about 10 s (torch, CUDA, gloo), 6 paged cases and 2 round trips follow.
REMOTE=(--bench roundtrip,remote --ranks 2 --quick --format fp16 --layout layer --samples 6
        --set remote.bytes=64MiB --set remote.budget_s=1
        --cases '^(hbm|dram)<->remote/'
        --cases '^(remote->hbm|hbm->remote|remote->dram)/layer/fp16/16tok/(per_page|coalesced)$'
        --cases '^(remote->hbm|hbm->remote)/nccl$')

# ------------------------------------------------------------------------------ helpers
FAILED=0

log() { printf '%s\n' "$*" >> "$LOG"; }
quoted() { printf '%q ' "$@"; }  # a command line that can be pasted back into a shell

# seconds a stage may take: min(cap, time left before the deadline)
allowance() {
  local left=$((DEADLINE_S - SECONDS))
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# run CAP OUTFILE CMD...: CMD under timeout, stdout+stderr to OUTFILE; sets RC and DUR
run_capped() {
  local cap=$1 out=$2 t0=$SECONDS
  shift 2
  timeout -k 10 "$cap" "$@" >> "$out" 2>&1
  RC=$? DUR=$((SECONDS - t0))
}

describe_rc() {
  case $1 in
    0) echo "exit 0" ;;
    124|137) echo "exit $1: timed out after its $2 s" ;;
    *) echo "exit $1" ;;
  esac
}

tail_into_log() {  # tail_into_log TITLE FILE [LINES]
  [ -s "$2" ] || return 0
  log "    --- $1 ---"
  tail -n "${3:-40}" "$2" | sed 's/^/    /' >> "$LOG"
}

# ------------------------------------------------------------------------------ stage 0
stage_identity() {
  local cap
  cap=$(allowance "$CAP_IDENTITY")
  : > "$WORK/identity.out"
  run_capped "$cap" "$WORK/identity.out" python3 - "$OUT/identity.json" "$NVME_DIR" <<'PY'
import datetime, importlib.metadata as md, json, os, platform, subprocess, sys

out, nvme = sys.argv[1], sys.argv[2]
doc = {"what": "kvbench gpu_check identity",
       "collected_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "nvme_dir": nvme}

def save():  # after every section: a timeout keeps what was collected
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(out + ".tmp", out)

def run(cmd, timeout=10):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"cmd": " ".join(cmd), "error": f"{type(exc).__name__}: {exc}"}
    return {"cmd": " ".join(cmd), "rc": r.returncode, "stdout": r.stdout.splitlines(),
            "stderr": r.stderr.splitlines()[-20:]}

info = run([sys.executable, "-m", "kvbench", "info", "--json", "--nvme-dir", nvme], timeout=20)
try:
    doc["kvbench_info"] = json.loads("\n".join(info["stdout"]))
except (KeyError, ValueError):
    doc["kvbench_info"] = info
save()
doc["nvidia_smi_q"] = run(["nvidia-smi", "-q", "-d", "PCIE,CLOCK,MEMORY"])
doc["nvidia_smi"] = run(["nvidia-smi"])
save()
v = {"python": sys.version, "platform": platform.platform()}
for dist in ("torch", "triton", "cuda-bindings", "cuda-python", "nvidia-cufile", "kvikio-cu13", "nvidia-ml-py",
             "transformers"):
    try:
        v[dist] = md.version(dist)
    except md.PackageNotFoundError:
        v[dist] = None
try:
    import torch
    v["torch_cuda"] = torch.version.cuda
    v["cuda_available"] = torch.cuda.is_available()
    if v["cuda_available"]:
        v["device"] = torch.cuda.get_device_name(0)
        v["capability"] = list(torch.cuda.get_device_capability(0))
except Exception as exc:  # noqa: BLE001 - recorded, not fatal
    v["torch_error"] = f"{type(exc).__name__}: {exc}"
drv = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
v["driver"] = (drv.get("stdout") or [None])[0] if drv.get("rc") == 0 else drv.get("error", drv.get("stderr"))
doc["versions"] = v
save()
doc["gds_status"] = run([sys.executable, "-c", "from kvbench.gds import gds_status; print(gds_status())"], timeout=20)
save()
doc["disk"] = {"df": run(["df", "-hT", nvme]), "findmnt": run(["findmnt", "-T", nvme])}
doc["ulimit_l"] = run(["bash", "-c", "ulimit -l"])
save()
sys.exit(0 if info.get("rc") == 0 else 1)
PY
  local status=ok
  [ "$RC" = 0 ] || { status=FAILED; FAILED=1; }
  log "stage 0 identity: $status ($(describe_rc "$RC" "$cap"), ${DUR} s) $(produced identity.json)"
  tail_into_log "identity output (tail)" "$WORK/identity.out" 10
}

# ------------------------------------------------------------------------------ GPU stages
# no_time N NAME: true (and the stage's line logged) when the deadline leaves < 10 s
no_time() {
  local left=$((DEADLINE_S - SECONDS))
  [ "$left" -lt 10 ] || return 1
  log "stage $1 $2: not run: $left s left before the ${DEADLINE_S} s deadline"
}

produced() { if [ -s "$OUT/$1" ]; then echo "-> $1"; else echo "(no $1 written)"; fi; }

stage_tests() {
  local log1=$OUT/stage1-tests.log cap end
  no_time 1 tests && return
  : > "$log1"
  cap=$(allowance "$CAP_TESTS")
  end=$((SECONDS + cap))
  local rcs="" t0=$SECONDS part sub
  for part in store probe gpu; do
    sub=$((end - SECONDS))
    if [ "$sub" -lt 5 ]; then rcs="$rcs $part=not-run(deadline)"; FAILED=1; continue; fi
    printf '\n===== %s: ' "$part" >> "$log1"
    case $part in
      store) echo "python3 -m pytest $(quoted "${STORE_TESTS[@]}")" >> "$log1"
             run_capped "$sub" "$log1" python3 -m pytest "${STORE_TESTS[@]}" ;;
      probe) echo "kvbench run $(quoted "${PROBE[@]}")" >> "$log1"
             run_capped "$sub" "$log1" python3 -m kvbench run "${PROBE[@]}" --no-progress \
               --nvme-dir "$NVME_DIR" -o "$WORK/probe.json" --force ;;
      gpu)   echo "python3 -m pytest $(quoted "${GPU_TESTS[@]}")" >> "$log1"
             run_capped "$sub" "$log1" python3 -m pytest "${GPU_TESTS[@]}" ;;
    esac
    echo "===== $part: $(describe_rc "$RC" "$sub") after ${DUR} s" >> "$log1"
    rcs="$rcs $part=$RC"
    [ "$RC" = 0 ] || FAILED=1
  done
  local status=ok r
  for r in $rcs; do [ "${r#*=}" = 0 ] || status=FAILED; done
  log "stage 1 tests: $status (exits:$rcs; $((SECONDS - t0)) s, cap $cap s) -> stage1-tests.log"
  tail_into_log "stage1-tests.log (tail)" "$log1" 30
}

stage_bench() {  # stage_bench N NAME CAP ARGS...
  local n=$1 name=$2 cap
  shift 2
  no_time "$n" "$name" && return
  cap=$(allowance "$1")
  shift
  : > "$WORK/$name.out"
  echo "kvbench run $(quoted "$@")" >> "$WORK/$name.out"
  run_capped "$cap" "$WORK/$name.out" python3 -m kvbench run "$@" --no-progress \
    --nvme-dir "$NVME_DIR" -o "$OUT/$name.json" --force
  local status=ok
  [ "$RC" = 0 ] || { status=FAILED; FAILED=1; }
  log "stage $n $name: $status ($(describe_rc "$RC" "$cap"), ${DUR} s, cap $cap s) $(produced "$name.json")"
  tail_into_log "kvbench output (tail)" "$WORK/$name.out" 60
}

# ------------------------------------------------------------------------------ dry runs
# dry_kvbench ARGS...: the stage's kvbench command planned as on a GPU; sets DRY (a count
# and, on failure, why) and appends the planned case names to $WORK/dry.list
dry_kvbench() {
  local out=$WORK/dry.out err=$WORK/dry.err n rc
  timeout -k 5 60 python3 -m kvbench run "$@" --no-progress --nvme-dir "$NVME_DIR" \
    --dry-run --plan-as-gpu > "$out" 2> "$err"
  rc=$?
  n=$(grep -c . "$out")
  cat "$out" >> "$WORK/dry.list"
  if [ "$rc" != 0 ] || [ "$n" = 0 ]; then
    DRY="0 cases: NO MATCH (exit $rc: $(tail -n 1 "$err"))"; FAILED=1
  else
    DRY="$n cases"
  fi
}

# dry_pytest ARGS...: how many tests the stage's pytest selection collects
dry_pytest() {
  local out=$WORK/collect.out n rc
  timeout -k 5 90 python3 -m pytest --collect-only "$@" > "$out" 2>&1
  rc=$?
  n=$(grep -Eo '^[0-9]+(/[0-9]+)? tests? collected' "$out" | grep -Eo '^[0-9]+' | tail -n 1)
  if [ "$rc" != 0 ] || [ -z "$n" ] || [ "$n" = 0 ]; then
    DRY="0 tests: NO MATCH (exit $rc: $(tail -n 1 "$out"))"; FAILED=1
  else
    DRY="$n tests"
  fi
}

dry_stage() {  # dry_stage N NAME ARGS...   (a kvbench stage without a GPU)
  local n=$1 name=$2
  shift 2
  : > "$WORK/dry.list"
  dry_kvbench "$@"
  log "stage $n $name: skipped (no CUDA device: $CUDA_WHY); dry run --plan-as-gpu: $DRY"
  log "    --- kvbench run $(quoted "$@")--dry-run --plan-as-gpu: cases ---"
  sed 's/^/    /' "$WORK/dry.list" >> "$LOG"
}

dry_tests() {
  local parts=""
  : > "$WORK/dry.list"
  dry_pytest "${STORE_TESTS[@]}"; parts="test_store $DRY"
  dry_kvbench "${PROBE[@]}"; parts="$parts, batched probe $DRY"
  dry_pytest "${GPU_TESTS[@]}"; parts="$parts, pytest -m gpu $DRY"
  log "stage 1 tests: skipped (no CUDA device: $CUDA_WHY); dry run: $parts"
  log "    --- batched probe cases ---"
  sed 's/^/    /' "$WORK/dry.list" >> "$LOG"
}

# ------------------------------------------------------------------------------ main
: > "$LOG"
COMMIT=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ", dirty" || true)
log "kvbench gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ): commit $COMMIT$DIRTY; deadline $DEADLINE_S s; out $OUT; nvme dir $NVME_DIR"
CUDA_LINE=$(timeout 60 python3 -c 'from kvbench.tiers.hbm import cuda_status; ok, why = cuda_status(); print(("yes " if ok else "no ") + why)' 2>&1 | tail -n 1)
CUDA_OK=${CUDA_LINE%% *} CUDA_WHY=${CUDA_LINE#* }
[ "$CUDA_OK" = yes ] || CUDA_OK=no
log "cuda: $CUDA_OK ($CUDA_WHY)"

stage_identity
if [ "$CUDA_OK" = yes ]; then
  stage_tests
  stage_bench 2 transfer "$CAP_TRANSFER" "${TRANSFER[@]}"
  stage_bench 3 decode "$CAP_DECODE" "${DECODE[@]}"
  stage_bench 4 accuracy "$CAP_ACCURACY" "${ACCURACY[@]}"
  stage_bench 5 prefix "$CAP_PREFIX" "${PREFIX[@]}"
  stage_bench 6 e2e "$CAP_E2E" "${E2E[@]}"
  stage_bench 7 remote "$CAP_REMOTE" "${REMOTE[@]}"
else
  dry_tests
  dry_stage 2 transfer "${TRANSFER[@]}"
  dry_stage 3 decode "${DECODE[@]}"
  dry_stage 4 accuracy "${ACCURACY[@]}"
  dry_stage 5 prefix "${PREFIX[@]}"
  dry_stage 6 e2e "${E2E[@]}"
  dry_stage 7 remote "${REMOTE[@]}"
fi
log "gpu_check: exit $FAILED after $SECONDS s ($(ls "$OUT" | wc -l) files in $OUT)"
tail -n 1 "$LOG"
exit "$FAILED"
