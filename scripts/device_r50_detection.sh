#!/usr/bin/env bash
# One prepared run for a lent GPU machine (one H200; 16 cores): the CUDA kernel build and op tests, the kernel
# benchmark, and the ResNet-50 demo comparison of issue 7 -- pretraining on the demo world at 224 px, then YOLOv3
# detection (Object-CXR at 256 px, RSNA at 224 px, 100% of the labels, 30 epochs) and the CheXpert probe,
# pretrained against random init. Everything is bounded by DEADLINE (s) so that the logs always come back.
#
#   DEADLINE=535 bash scripts/device_r50_detection.sh      # writes env.log kernels.log pretrain.log det.log
#                                                          # summary.txt summary.json bench.txt kernels.json to $OUT
#
# That machine's image lacks pycocotools and pydicom: put their Python 3.12 wheels in .whl/ (pip download
# --only-binary=:all: --python-version 3.12 ...) and carry the folder; they are installed from there when present.
# Knobs for a dry run on a CPU (the kernel step then stops at device_check.sh's "no GPU"): LOCAL=1 (no wheel
# install), EP1 / EP2 (pretraining epochs), PRE_EXTRA, DET_EXTRA (default --epochs 30), LIN_EXTRA (extra flags), SEEDS
# (Object-CXR head seeds, default 0 1 2), RSNA_SEEDS (default 0), FTSEEDS (default 0).
# Its first run on an H200 pretrained in 215 s; with five head seeds of 50 epochs on each data set (12 detection
# processes at once) the pretrained lanes reached epoch 16-27 of 50 by the deadline, hence the smaller defaults now.
set -u
T0=$SECONDS; DEADLINE=${DEADLINE:-550}
left() { echo $((DEADLINE - (SECONDS - T0))); }
stamp() { echo "[$((SECONDS - T0)) s] $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CGNS_NO_JIT=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$(dirname "$0")/.."
if [ -z "${LOCAL:-}" ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc --all
  python3 -c "import torch,transformers,tokenizers,numpy;print(torch.__version__,torch.version.cuda,transformers.__version__,tokenizers.__version__,numpy.__version__)"; } > $OUT/env.log 2>&1
cat $OUT/env.log
# the kernels: scripts/device_check.sh builds them for the visible GPU in a copy and runs the op tests; the
# benchmark waits for the end, when the GPU is idle
rm -rf /tmp/k && cp -r . /tmp/k
( cd /tmp/k && unset CGNS_NO_JIT && MAX_JOBS=8 OMP_NUM_THREADS=4 DEVICE_CHECK_BENCH=0 bash scripts/device_check.sh /tmp/k/out ) \
  > $OUT/kernels.log 2>&1 &
KPID=$!
stamp "generate"; python3 -m cgns.synthetic --out data/demo --workers 12 2>&1 | tail -2; stamp "generated"
mkdir -p runs
det() { local name=$1; shift; local t; t=$(left); [ "$t" -gt 20 ] || { echo "== $name skipped (no time)" >> runs/$name.log; return; }
  timeout $t python3 train_detect.py "$@" ${DET_EXTRA:---epochs 30} --data-pct 1 --output-dir runs/$name > runs/$name.log 2>&1; echo "== $name rc $? at $((SECONDS - T0)) s" >> runs/$name.log; }
R50="--image-encoder resnet50"
( DEADLINE=$((DEADLINE - 90)); for s in ${SEEDS:-0 1 2}; do det obj_rand_s$s --dataset object_cxr --random-init $R50 --image-size 256 --seeds $s; done ) &
A=$!
( DEADLINE=$((DEADLINE - 90)); for s in ${RSNA_SEEDS:-0}; do det rsna_rand_s$s --dataset rsna --random-init $R50 --image-size 224 --seeds $s; done ) &
B=$!
stamp "pretrain"
OMP_NUM_THREADS=4 timeout $(( $(left) - 180 )) python3 train_pretrain.py $R50 --image-size 224 --stage1-epochs ${EP1:-20} --stage2-epochs ${EP2:-2} \
  --seed 42 --num-workers 6 --no-linear-eval --no-report --no-progress ${PRE_EXTRA:-} --output-dir runs/r50 > $OUT/pretrain.log 2>&1
stamp "pretrain rc $?"; tail -4 $OUT/pretrain.log
CK=runs/r50/checkpoints/final.pt; [ -f $CK ] || CK=runs/r50/checkpoints/latest.pt; stamp "checkpoint $CK"
DEADLINE=$((DEADLINE - 90))   # the pretrained lanes leave 90 s for the kernel benchmark
for s in ${SEEDS:-0 1 2}; do det obj_pre_s$s --dataset object_cxr --checkpoint $CK --resize-checkpoint --image-size 256 --seeds $s & done
for s in ${RSNA_SEEDS:-0}; do det rsna_pre_s$s --dataset rsna --checkpoint $CK --seeds $s & done
for s in ${FTSEEDS:-0}; do det objft_pre_s$s --dataset object_cxr --checkpoint $CK --resize-checkpoint --image-size 256 --seeds $s --finetune &
  det objft_rand_s$s --dataset object_cxr --random-init $R50 --image-size 256 --seeds $s --finetune & done
( t=$(( $(left) - 30 )); timeout $t python3 train_linear.py --dataset chexpert --data-pct 0.01 0.1 1 --checkpoint $CK ${LIN_EXTRA:-} --output-dir runs/lin_pre > runs/lin_pre.log 2>&1
  t=$(( $(left) - 30 )); timeout $t python3 train_linear.py --dataset chexpert --data-pct 0.01 0.1 1 --random-init $R50 --image-size 224 ${LIN_EXTRA:-} --output-dir runs/lin_rand > runs/lin_rand.log 2>&1 ) &
F=$!
wait; stamp "all lanes and the kernel tests done"; DEADLINE=$((DEADLINE + 90))
for f in runs/*.log; do echo "######## $f"; cat $f; done > $OUT/det.log 2>&1
python3 scripts/summarise_runs.py $OUT/summary.json runs > $OUT/summary.txt 2>&1; cat $OUT/summary.txt
t=$(( $(left) + 25 )); stamp "kernel benchmark, $t s"
[ $t -gt 15 ] && ( cd /tmp/k && CGNS_REQUIRE_EXT=1 timeout $t python3 -m cgns.bench --only kernels --json $OUT/kernels.json > $OUT/bench.txt 2>&1; echo "bench rc $?" >> $OUT/bench.txt )
tail -30 $OUT/bench.txt; stamp end
