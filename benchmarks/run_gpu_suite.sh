#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md, from the repository root of a CUDA machine:
#   OUT_DIR=gpu_results bash benchmarks/run_gpu_suite.sh
# 1. exact AUC on 40M rows; 2. the whole `kedro run` chain at scale on the GPU (data pipeline,
# training, evaluation, report); 3. training-step throughput at several batch sizes.
set -euo pipefail
OUT_DIR=${OUT_DIR:-gpu_results}
TRAIN_ROWS=${TRAIN_ROWS:-3000000}
TEST_ROWS=${TEST_ROWS:-500000}
mkdir -p "$OUT_DIR"
export KEDRO_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT_DIR/gpu.txt" 2>&1 || true
python - >>"$OUT_DIR/gpu.txt" <<'PY'
import platform, numpy, pandas, pyarrow, torch
print("python", platform.python_version(), "torch", torch.__version__, "numpy", numpy.__version__,
      "pandas", pandas.__version__, "pyarrow", pyarrow.__version__, "cuda", torch.version.cuda)
PY

echo "== exact AUC"
python -m benchmarks.bench_auc --device cuda | tee "$OUT_DIR/auc.md"

echo "== kedro run at $TRAIN_ROWS train rows"
start=$(date +%s)
python -m kedro run --params "synthetic.n_train_rows=$TRAIN_ROWS,synthetic.n_test_rows=$TEST_ROWS,\
synthetic.n_users=8000,synthetic.n_items=10000,runtime.log_every=200,\
runtime.valid_every=1000,runtime.grad_diag_every=200,runtime.progress_bar=false" \
  >"$OUT_DIR/kedro_run.log" 2>&1
echo "kedro run seconds: $(( $(date +%s) - start ))" | tee -a "$OUT_DIR/kedro_run.log"
grep -E "Completed node|step [0-9]+/|valid @|auto_eval|evaluation \(|Model:|Parsed|Encoded" \
  "$OUT_DIR/kedro_run.log" | sed 's/  */ /g' | tail -n 60
for f in 07_model_output/training_summary.json 08_reporting/evaluation_metrics.json; do
  cp "$(ls -d data/$f/*/ | tail -1)$(basename "$f")" "$OUT_DIR/" 2>/dev/null || true
done

echo "== training throughput (bf16 autocast, then fp32)"
python -m benchmarks.bench_training --device cuda --batch-sizes 1024 4096 16384 65536 \
  --json "$OUT_DIR/training_amp.json" 2>&1 | grep -v INFO
python -m benchmarks.bench_training --device cuda --batch-sizes 1024 4096 16384 65536 \
  --override runtime.amp=false --json "$OUT_DIR/training_fp32.json" 2>&1 | grep -v INFO

echo "== where a step's time goes"
python -m benchmarks.profile_step --device cuda --batch-size 1024 2>&1 | grep -v INFO | head -40
