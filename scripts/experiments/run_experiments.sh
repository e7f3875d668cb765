#!/usr/bin/env bash
# Reproduce docs/experiments.md: accuracy on Fashion-MNIST (4 local ranks; Horovod's MNIST example
# with the import swapped, needs HOROVOD_SRC, a Horovod source tree), convergence on digits, scaling on the emulated
# 1 GbE cluster (root; P = 1, 2, 4, 8; VGG-16 and ResNet-20 on synthetic CIFAR-shaped data), and
# the DDP hooks (PyTorch's allreduce, fp16, PowerSGD; ours) against the Horovod-style optimizer.
#   scripts/experiments/run_experiments.sh fashion | fashion-seeds | fashion-steps | fashion-ports | fashion-scaled | fashion-report | convergence | scaling | ddp | all
# fashion skips runs whose output exists (delete it to rerun): its runs take hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
MPIEXEC=${GTOPK_MPIEXEC:-.venv/bin/mpiexec}
mkdir -p docs/data docs/img

fashion_example() {  # Horovod's examples/pytorch/pytorch_mnist.py, import swapped, 5 epochs
  local src=${HOROVOD_SRC:?set HOROVOD_SRC to a Horovod source tree (examples/pytorch/pytorch_mnist.py)}
  local name env
  for spec in "dense:" "gtopk0.01:GTOPK_DENSITY=0.01" "gtopk0.001:GTOPK_DENSITY=0.001" \
              "gtopk0.001_nofloor:GTOPK_DENSITY=0.001 GTOPK_MIN_K=0" \
              "gtopk0.001_bare:GTOPK_DENSITY=0.001 GTOPK_MIN_K=0 GTOPK_DENSITY_WARMUP=none"; do
    name=${spec%%:*} env=${spec#*:}
    [ -s "docs/data/fmnist_hvd_$name.txt" ] && continue
    env $env scripts/horovod/horovod_mnist.sh "$src" 4 --epochs 5 --log-interval 1000 2>&1 \
      | grep -E "Test set|gtopk_mpi:" > "docs/data/fmnist_hvd_$name.txt.part"
    mv "docs/data/fmnist_hvd_$name.txt.part" "docs/data/fmnist_hvd_$name.txt"
  done
}

declare -A FASHION_ARGS=(  # run name -> train.py args (VAR=VALUE words go to the environment)
  [dense]="--algo dense"
  [gtopk0.001]="--algo gtopk --density 0.001"
  [gtopk0.001_nofloor]="GTOPK_MIN_K=0 --algo gtopk --density 0.001"
  [gtopk0.001_mc]="--algo gtopk --density 0.001 --momentum-correction"
  [gtopk0.001_exact]="--algo gtopk --values exact --density 0.001"
  [gtopk0.01]="--algo gtopk --density 0.01"
  [gtopk0.01_exact]="--algo gtopk --values exact --density 0.01"
  [gtopk0.01_nofloor]="GTOPK_MIN_K=0 --algo gtopk --density 0.01"
  [gtopk0.01_exact_nofloor]="GTOPK_MIN_K=0 --algo gtopk --values exact --density 0.01"
  [gtopk0.001_2x2]="GTOPK_RANKS_PER_HOST=2 --algo gtopk --density 0.001"
  [topk0.001]="--algo topk --density 0.001"
  [topk0.01]="--algo topk --density 0.01"
  [ddp-allreduce]="--ddp --hook allreduce"
  [ddp-gtopk0.001]="--ddp --hook gtopk --density 0.001"
  [ddp-gtopk0.001_start10]="--ddp --hook gtopk --density 0.001 --start-iter 10"
  [ddp-gtopk0.001_start10_nowarm]="GTOPK_DENSITY_WARMUP=none --ddp --hook gtopk --density 0.001 --start-iter 10"
  [ddp-gtopk0.001_warmep]="GTOPK_DENSITY_WARMUP_STEPS=468 --ddp --hook gtopk --density 0.001"
  [gtopk0.001_warmep]="GTOPK_DENSITY_WARMUP_STEPS=468 --algo gtopk --density 0.001"
  [ddp-gtopk0.01]="--ddp --hook gtopk --density 0.01"
  [ddp-powersgd1]="--ddp --hook powersgd:1 --bucket-cap-mb 10000"
  [ddp-powersgd4]="--ddp --hook powersgd:4 --bucket-cap-mb 10000"
  [ddp-powersgd4_start10]="--ddp --hook powersgd:4 --bucket-cap-mb 10000 --start-iter 10"
)
# model/run, most needed first: the defaults against dense on both models, then the time-to-accuracy
# rivals on the communication-heavy convnet, then the rest of the grid
FASHION_PLAN=(convnet/dense convnet/gtopk0.001 convnet/ddp-powersgd4 resnet20/dense resnet20/gtopk0.001
  convnet/ddp-gtopk0.001 convnet/gtopk0.01 convnet/ddp-gtopk0.01 convnet/gtopk0.001_nofloor convnet/topk0.001
  convnet/gtopk0.001_exact convnet/gtopk0.001_mc
  convnet/ddp-allreduce convnet/ddp-powersgd1 convnet/gtopk0.01_exact convnet/topk0.01 convnet/gtopk0.001_2x2
  convnet/ddp-gtopk0.001_start10 convnet/ddp-powersgd4_start10 convnet/ddp-gtopk0.001_start10_nowarm
  resnet20/ddp-powersgd4 resnet20/ddp-gtopk0.001 resnet20/gtopk0.001_nofloor resnet20/topk0.001
  resnet20/gtopk0.001_exact resnet20/ddp-allreduce resnet20/ddp-powersgd1 resnet20/ddp-gtopk0.001_start10
  resnet20/gtopk0.01_nofloor resnet20/gtopk0.01_exact_nofloor)
# (resnet20's rho = 0.01 runs go without the floor: its k, 2,722 of 272,186, is raised to GTOPK_MIN_K
# as rho = 0.001's is, so under the defaults they would repeat the rho = 0.001 runs step for step)
# the runs fashion-steps times: a name times it on every model, model/name on that model only (the
# runs FASHION_PLAN has on one model)
FASHION_TIMED=(dense gtopk0.001 gtopk0.001_nofloor gtopk0.001_exact topk0.001 ddp-allreduce ddp-gtopk0.001
  ddp-powersgd1 ddp-powersgd4 convnet/gtopk0.01 convnet/ddp-gtopk0.01 resnet20/gtopk0.01_nofloor)

fashion_train() {  # fashion_train MODEL RUN [train.py args...]: one run of FASHION_ARGS on 4 ranks
  local model=$1 name=$2 lr=0.02 w
  shift 2
  [ "$model" = resnet20 ] && lr=0.05
  local envs=() args=()
  for w in ${FASHION_ARGS[$name]}; do [[ $w == GTOPK_*=* ]] && envs+=("$w") || args+=("$w"); done
  env "${envs[@]}" MASTER_PORT=$((29700 + RANDOM % 200)) ${LAUNCH:-"$MPIEXEC" -n 4} $PY scripts/experiments/train.py \
    --data fashion-mnist --model "$model" --batch-size 32 --lr $lr --momentum 0.9 --quiet "${args[@]}" "$@"
}

finished() {  # finished CSV: true when a run's CSV holds its 10th epoch (column 8: epoch)
  [ -s "$1" ] && awk -F, 'NR > 1 && $8 == 10' "$1" | grep -q .
}

fashion() {  # accuracy: 10 epochs each (convnet ~12 min, resnet20 ~30 min on 2 cores), finished runs skipped
  fashion_example
  local run out
  for run in "${FASHION_PLAN[@]}"; do
    out="docs/data/fmnist_${run%/*}_${run#*/}.csv"
    finished "$out" && continue
    fashion_train "${run%/*}" "${run#*/}" --epochs 10 --csv "$out"
  done
}

# the time-to-accuracy rivals again with other seeds (model init and data order): one evaluation a
# epoch on one seed cannot tell epoch 4 from epoch 6 when runs differ by less than epoch-to-epoch noise;
# then ResNet-20's defaults against dense (its accuracy verdict), its hook, PowerSGD rank 4 and DDP allreduce
# (25-45 min a run here)
FASHION_SEEDED=(convnet/dense convnet/ddp-gtopk0.001 convnet/ddp-powersgd4 convnet/gtopk0.001 convnet/ddp-allreduce
  convnet/ddp-gtopk0.001_start10 convnet/ddp-powersgd4_start10 convnet/ddp-gtopk0.001_start10_nowarm
  resnet20/dense resnet20/gtopk0.001 resnet20/ddp-gtopk0.001_start10 resnet20/ddp-powersgd4 resnet20/ddp-allreduce)

fashion_seeds() {  # FASHION_SEEDED with --seed 1 and 2 (seed 0 is fashion's run), finished runs skipped
  local run seed out
  for seed in ${SEEDS:-1 2}; do
    for run in "${FASHION_SEEDED[@]}"; do
      out="docs/data/fmnist_${run%/*}_${run#*/}_seed$seed.csv"
      finished "$out" && continue
      fashion_train "${run%/*}" "${run#*/}" --epochs 10 --seed "$seed" --csv "$out"
    done
  done
}

emulated_sitting() {  # emulated_sitting RATE: the 4-host cluster up at RATE (down at exit), gloo told where it is
  RATE=$1 scripts/cluster/emulate_cluster.sh up 4
  trap 'scripts/cluster/emulate_cluster.sh down' EXIT
  export MASTER_ADDR=10.77.0.1 GLOO_SOCKET_IFNAME=gtknet
}

step_runs() {  # step_runs PREFIX TAG MODELS RUNS [train.py args]: on each model, step_time of each of RUNS (a name:
  # every model; model/name: that model only), then of each FASHION_WARMUP_RUNS run (default: gTop-k's optimizer
  # and hook) at each density of the library's warm-up, to docs/data/fmnist_{PREFIX}_{model}_{run}[_at{density}]{TAG}.csv
  local prefix=$1 tag=$2 models=$3 runs=$4 model name density warmup
  shift 4
  warmup=$($PY -c "from gtopk_mpi import config; print(config.DENSITY_WARMUP.default.replace(',', ' '))")
  for model in $models; do
    for name in $runs; do  # steady state: no density warm-up, hooks compressing from step 2
      if [[ $name == */* ]]; then [ "${name%/*}" = "$model" ] || continue; name=${name#*/}; fi
      step_time $model $name "docs/data/fmnist_${prefix}_${model}_$name$tag.csv" "$@"
    done
    for name in ${FASHION_WARMUP_RUNS-gtopk0.001 ddp-gtopk0.001}; do
      for density in $warmup; do
        step_time $model $name "docs/data/fmnist_${prefix}_${model}_${name}_at$density$tag.csv" "$@" --density $density
      done
    done
  done
}

fashion_step_times() {  # each run's step time on the emulated 1 GbE cluster, P = 4 (2 epochs of 20 steps),
  # ROUNDS (3) times, the rounds one after the other so that a noisy minute hits one round of every
  # run, not every round of one (round 1: fmnist_step_{model}_{run}.csv, then ..._round{N}.csv;
  # time_to_accuracy.py takes the median); FASHION_MODELS, FASHION_RUNS (as FASHION_TIMED) and
  # FASHION_WARMUP_RUNS choose a subset, to remeasure runs in one sitting; FIRST_ROUND (1) > 1 adds
  # rounds to an earlier sitting's
  emulated_sitting "${RATE:-1gbit}"
  local round tag
  for round in $(seq "${FIRST_ROUND:-1}" "${ROUNDS:-3}"); do
    tag=""
    [ "$round" = 1 ] || tag="_round$round"
    step_runs step "$tag" "${FASHION_MODELS:-convnet resnet20}" "${FASHION_RUNS:-${FASHION_TIMED[*]}}"
  done
}

fashion_port_bytes() {  # what left each host's port a step, steady state, emulated 1 GbE cluster, P = 4
  # (fmnist_port_{model}_{run}.csv: train.py --nic, the mean over ranks of each one's network namespace's
  # tx counter), the warm-up densities too; FASHION_MODELS, FASHION_RUNS and FASHION_WARMUP_RUNS as
  # fashion-steps. Bytes, not times: needs no quiet machine
  emulated_sitting "${RATE:-1gbit}"
  step_runs port "" "${FASHION_MODELS:-convnet resnet20}" "${FASHION_RUNS:-${FASHION_TIMED[*]}}" \
    --nic /sys/class/net/gtknet/statistics/tx_bytes
}

# the runs timed on a link 50x slower than 1 GbE (fashion-scaled): the time-to-accuracy rivals
FASHION_SCALED=(dense gtopk0.001 ddp-allreduce ddp-gtopk0.001 ddp-powersgd4)

fashion_scaled_steps() {  # step times with the link at 1 Gbit/s / 50 (20 Mbit/s), so that communication /
  # computation is what it would be on GPU nodes on 1 GbE (a rank here computes ~50x slower than a GPU);
  # one round of FASHION_SCALED and FASHION_WARMUP_RUNS' warm-up densities (the gTop-k runs among them),
  # FASHION_MODELS (convnet) (fmnist_step20mbit_{model}_{run}.csv; run it on a quiet machine)
  emulated_sitting 20mbit
  step_runs step20mbit "" "${FASHION_MODELS:-convnet}" "${FASHION_RUNS:-${FASHION_SCALED[*]}}"
}

step_time() {  # step_time MODEL RUN CSV [train.py args]: 2 epochs of STEPS (20) steps, the steady state
  GTOPK_DENSITY_WARMUP=none LAUNCH="scripts/cluster/emulate_cluster.sh run 4" fashion_train $1 $2 --epochs 2 \
    --steps-per-epoch ${STEPS:-20} --start-iter 2 --csv "$3" "${@:4}"
}

fashion_report() {  # tables and plots of what the fashion runs wrote
  $PY scripts/experiments/time_to_accuracy.py --models convnet resnet20 --out docs/data/fmnist_time_to_accuracy.md \
    --plot docs/img/fmnist_time_to_accuracy.png
  for model in convnet resnet20; do
    $PY scripts/experiments/train.py --plot-from $(ls docs/data/fmnist_${model}_*.csv | grep -v _seed) \
      --plot docs/img/fmnist_$model.png  # seed 0 of each run
  done
}

convergence() {
  export GTOPK_MIN_K=0  # the algorithm at k = 27 of 26,122 as the paper's rho, not the library's floor
  local common=(--model mlp --data digits --density 0.001 --density-warmup 0.25,0.0625,0.0156,0.004
                --epochs 100 --batch-size 16 --lr 0.1 --lr-warmup-epochs 5 --quiet)
  "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo dense "${common[@]}" --csv docs/data/conv_dense.csv
  "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo topk --wire fp32 "${common[@]}" --csv docs/data/conv_topk.csv
  "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo gtopk --values merged --wire fp32 "${common[@]}" \
    --csv docs/data/conv_gtopk_merged.csv
  "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo gtopk --values exact --wire fp32 "${common[@]}" \
    --csv docs/data/conv_gtopk_exact.csv
  for wire in bf16 fp16; do  # the compact wire formats, against the float32 wire above
    for values in merged exact; do
      "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo gtopk --values $values --wire $wire "${common[@]}" \
        --csv docs/data/conv_gtopk_${values}_$wire.csv
    done
  done
  for values in merged exact; do  # 2 hosts x 2 ranks (emulated): the hierarchical schedule, default bf16 wire
    GTOPK_RANKS_PER_HOST=2 "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --algo gtopk --values $values --wire bf16 \
      "${common[@]}" --csv docs/data/conv_gtopk_${values}_bf16_2x2.csv
  done
  $PY scripts/experiments/train.py --plot-from docs/data/conv_{dense,topk,gtopk_merged,gtopk_exact}.csv --plot docs/img/convergence.png
}

scaling() {
  scripts/cluster/emulate_cluster.sh up 8
  trap 'scripts/cluster/emulate_cluster.sh down' EXIT
  for model in vgg16 resnet20; do
    for p in 1 2 4 8; do
      for algo in dense topk gtopk; do
        scripts/cluster/emulate_cluster.sh run "$p" $PY scripts/experiments/train.py --model "$model" --data synthetic --algo "$algo" \
          --density 0.001 --epochs 2 --steps-per-epoch 5 --batch-size 8 --lr 0.01 --quiet \
          --csv "docs/data/scale_${model}_${algo}_p${p}.csv"
      done
    done
  done
  $PY scripts/experiments/scaling_table.py docs/data/scale_*.csv > docs/data/scaling_tables.md
}

HOOKS=(allreduce fp16 powersgd:1 powersgd:2 powersgd:4 gtopk)

ddp_speed() {  # DDP hooks vs the Horovod-style optimizer on the emulated 1 GbE cluster
  scripts/cluster/emulate_cluster.sh up 4
  trap 'scripts/cluster/emulate_cluster.sh down' EXIT
  export MASTER_ADDR=10.77.0.1 GLOO_SOCKET_IFNAME=gtknet  # torch.distributed's rendezvous and sockets on the shaped net
  local common=(--data synthetic --density 0.001 --epochs 2 --steps-per-epoch 5 --batch-size 8 --lr 0.01 --quiet)
  for model in vgg16 resnet20; do
    for p in 2 4; do
      for hook in "${HOOKS[@]}"; do
        # PowerSGD in one bucket: with DDP's default buckets it aborted in gloo on this network (a size
        # mismatch between ranks' allreduces) in most runs; its allreduces are chained in Future callbacks
        local one=(); [[ $hook == powersgd:* ]] && one=(--bucket-cap-mb 10000)
        MASTER_PORT=$((29700 + RANDOM % 200)) scripts/cluster/emulate_cluster.sh run "$p" $PY scripts/experiments/train.py --ddp --hook "$hook" \
          --model "$model" "${common[@]}" "${one[@]}" --csv "docs/data/ddp_${model}_${hook/:/}_p${p}.csv"
      done
      scripts/cluster/emulate_cluster.sh run "$p" $PY scripts/experiments/train.py --algo gtopk --model "$model" "${common[@]}" \
        --csv "docs/data/ddp_${model}_hvd-gtopk_p${p}.csv"
    done
  done
}

ddp_accuracy() {  # the same list on digits, 4 local ranks, the convergence runs' schedule
  export GTOPK_MIN_K=0
  local common=(--model mlp --data digits --density 0.001 --density-warmup 0.25,0.0625,0.0156,0.004
                --epochs 100 --batch-size 16 --lr 0.1 --lr-warmup-epochs 5 --quiet)
  for hook in "${HOOKS[@]}"; do
    "$MPIEXEC" -n 4 $PY scripts/experiments/train.py --ddp --hook "$hook" "${common[@]}" --csv "docs/data/conv_ddp_${hook/:/}.csv"
  done
}

case "${1:-all}" in
  fashion) fashion ;;
  fashion-seeds) fashion_seeds ;;
  fashion-steps) fashion_step_times ;;
  fashion-ports) fashion_port_bytes ;;
  fashion-scaled) fashion_scaled_steps ;;
  fashion-report) fashion_report ;;
  convergence) convergence ;;
  scaling) scaling ;;
  ddp) ddp_speed; ddp_accuracy ;;
  all) fashion; fashion_step_times; fashion_port_bytes; fashion_scaled_steps; fashion_report; convergence; scaling; ddp_speed; ddp_accuracy ;;
  *) echo "usage: $0 fashion|fashion-seeds|fashion-steps|fashion-ports|fashion-scaled|fashion-report|convergence|scaling|ddp|all" >&2; exit 2 ;;
esac
