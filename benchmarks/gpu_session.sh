#!/usr/bin/env bash
# The GPU figures in docs/benchmarks.md: one short session on one GPU, run from the repository root.
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# 1. benchmarks/gpu_check.py: CUDA vs CPU correctness of Shampoo, no host syncs off root steps,
#    eigh vs Newton roots per factor, Shampoo step time vs AdamW per root method on BERT models.
# 2. The text recipe on the GPU (configs/text/gpu.yaml, one seed, 100 steps per domain, bf16).
# 3. benchmarks/text_hooks.py: tokens/s of the recipe's Trainer vs a plain HF Trainer, BERT-mini.
# Each part has its own time limit, so one that hangs cannot take the others with it. The text
# domains must already be in $BASINLAB_CACHE when the machine has no internet.
set -u
OUT=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/session.log"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/session.log"

timeout 480 python3 benchmarks/gpu_check.py --device cuda --output "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?" | tee -a "$OUT/session.log"

RUN=/tmp/text_gpu
timeout 180 python3 -m basinlab run configs/text/gpu.yaml --output "$RUN" --set 'seeds=[0]' \
    --set train.steps_per_domain=100 --set train.warmup_steps=10 --set train.eval_every_n_steps=null \
    --set train.logging_steps=20 --set train.dataloader_num_workers=0 2>&1 | grep -v 'it/s]' > "$OUT/text_gpu.log"
echo "text recipe exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
cp "$RUN/report.md" "$OUT/text_gpu_report.md" 2>/dev/null
cp "$RUN/summary.json" "$OUT/text_gpu_summary.json" 2>/dev/null

timeout 120 python3 benchmarks/text_hooks.py --preset mini --max-length 128 --batch-size 32 --steps 60 --windows 3 \
    2>&1 | grep -v 'it/s]' > "$OUT/text_hooks.log"
echo "text_hooks exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
