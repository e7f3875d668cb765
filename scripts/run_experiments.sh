#!/usr/bin/env bash
# Reproduce docs/experiments.md: convergence on digits (4 local ranks) and scaling on the
# emulated 1 GbE cluster (root; P = 1, 2, 4, 8; VGG-16 and ResNet-20 on synthetic CIFAR-shaped data).
#   scripts/run_experiments.sh convergence | scaling | all
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MPIEXEC=${GTOPK_MPIEXEC:-.venv/bin/mpiexec}
mkdir -p docs/data docs/img

convergence() {
  local common=(--model mlp --data digits --density 0.001 --density-warmup 0.25,0.0625,0.0156,0.004
                --epochs 100 --batch-size 16 --lr 0.1 --lr-warmup-epochs 5 --quiet)
  "$MPIEXEC" -n 4 $PY scripts/train.py --algo dense "${common[@]}" --csv docs/data/conv_dense.csv
  "$MPIEXEC" -n 4 $PY scripts/train.py --algo topk --wire fp32 "${common[@]}" --csv docs/data/conv_topk.csv
  "$MPIEXEC" -n 4 $PY scripts/train.py --algo gtopk --values merged --wire fp32 "${common[@]}" \
    --csv docs/data/conv_gtopk_merged.csv
  "$MPIEXEC" -n 4 $PY scripts/train.py --algo gtopk --values exact --wire fp32 "${common[@]}" \
    --csv docs/data/conv_gtopk_exact.csv
  for wire in bf16 fp16; do  # the compact wire formats, against the float32 wire above
    for values in merged exact; do
      "$MPIEXEC" -n 4 $PY scripts/train.py --algo gtopk --values $values --wire $wire "${common[@]}" \
        --csv docs/data/conv_gtopk_${values}_$wire.csv
    done
  done
  for values in merged exact; do  # 2 hosts x 2 ranks (emulated): the hierarchical schedule, default bf16 wire
    GTOPK_RANKS_PER_HOST=2 "$MPIEXEC" -n 4 $PY scripts/train.py --algo gtopk --values $values --wire bf16 \
      "${common[@]}" --csv docs/data/conv_gtopk_${values}_bf16_2x2.csv
  done
  $PY scripts/train.py --plot-from docs/data/conv_{dense,topk,gtopk_merged,gtopk_exact}.csv --plot docs/img/convergence.png
}

scaling() {
  scripts/emulate_cluster.sh up 8
  trap 'scripts/emulate_cluster.sh down' EXIT
  for model in vgg16 resnet20; do
    for p in 1 2 4 8; do
      for algo in dense topk gtopk; do
        scripts/emulate_cluster.sh run "$p" $PY scripts/train.py --model "$model" --data synthetic --algo "$algo" \
          --density 0.001 --epochs 2 --steps-per-epoch 5 --batch-size 8 --lr 0.01 --quiet \
          --csv "docs/data/scale_${model}_${algo}_p${p}.csv"
      done
    done
  done
  $PY scripts/scaling_table.py docs/data/scale_*.csv > docs/data/scaling_tables.md
}

case "${1:-all}" in
  convergence) convergence ;;
  scaling) scaling ;;
  all) convergence; scaling ;;
  *) echo "usage: $0 convergence|scaling|all" >&2; exit 2 ;;
esac
