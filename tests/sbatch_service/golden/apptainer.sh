#!/bin/bash
# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.
# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.
# shellcheck disable=SC2016,SC1003
true
set -euo pipefail
umask 077

export NTASKS='4'
export CPUS_PER_TASK='8'
export MEM_PER_CPU='4000'
export GPUS='4'
export CPUS='32'
export MEM='128000'

grid_reserved() {
  case "$1" in
    PATH | LD_LIBRARY_PATH | IFS | BASH_ENV | ENV | SHELLOPTS | BASHOPTS | STORAGE_PATH | DEEPSQUARE_* | SLURM_* | GRID_* | grid_*) return 0 ;;
  esac
  return 1
}

# Export the KEY=value lines that earlier steps wrote to $DEEPSQUARE_ENV.
grid_load_env() {
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    key="${line%%=*}"
    if [[ "$line" == *=* && "$key" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]] && ! grid_reserved "$key"; then
      export "$key=${line#*=}" 2>/dev/null || true
    fi
  done <"$DEEPSQUARE_ENV"
}

# Wait for a launched step (its pid) and return its exit status, also from another subshell.
grid_await() {
  local status_file="$STORAGE_PATH/.grid/launch-$1.rc"
  wait "$1" 2>/dev/null || true
  while [ ! -e "$status_file" ]; do
    sleep 1
  done
  return "$(cat "$status_file")"
}

# Send a signal to a launched step and everything it started (its own process group).
grid_signal() {
  kill -n "$1" -- "-$2" 2>/dev/null || true
}

grid_cleanup() {
  local pid
  for pid in "${grid_launches[@]}"; do
    grid_signal 15 "$pid"
  done
  wait
  rm -rf -- "$STORAGE_PATH"
}

grid_storage_root='/opt/cache/shared'
STORAGE_PATH="$grid_storage_root/$(id -u)/job-${SLURM_JOB_ID:-$$}"
readonly STORAGE_PATH
export STORAGE_PATH
export DEEPSQUARE_INPUT="$STORAGE_PATH/input"
export DEEPSQUARE_OUTPUT="$STORAGE_PATH/output"
export DEEPSQUARE_ENV="$STORAGE_PATH/env"
grid_launches=()
trap grid_cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p -- "$DEEPSQUARE_INPUT" "$DEEPSQUARE_OUTPUT" "$STORAGE_PATH/.grid" "$STORAGE_PATH/images"
: >"$DEEPSQUARE_ENV"
APPTAINER_DOCKER_USERNAME='bot' APPTAINER_DOCKER_PASSWORD='tok' apptainer pull "$STORAGE_PATH/images/image-629fd82c07cd.sif" 'docker://ghcr.io/org/trainer:latest'

set +e
(
  set -e
  grid_load_env
  srun --ntasks='4' --cpus-per-task='8' --mem-per-cpu='4000M' --gpus-per-task='1' --gpus='4' --mpi='pmix_v4' --export=ALL \
    env 'APPTAINERENV_STORAGE_PATH=/deepsquare' 'APPTAINERENV_DEEPSQUARE_INPUT=/deepsquare/input' 'APPTAINERENV_DEEPSQUARE_OUTPUT=/deepsquare/output' 'APPTAINERENV_DEEPSQUARE_ENV=/deepsquare/env' apptainer exec --contain --writable-tmpfs --no-home --nv --pwd '/app' --bind "$STORAGE_PATH:/deepsquare" "$STORAGE_PATH/images/image-629fd82c07cd.sif" '/bin/bash' -c './train --out $DEEPSQUARE_OUTPUT'
)
grid_status_1=$?
set -e
if [ "$grid_status_1" -ne 0 ]; then
  set +e
  (
    set -e
    export DEEPSQUARE_ERROR_CODE="$grid_status_1"
    grid_load_env
    srun --ntasks='1' --cpus-per-task='8' --mem-per-cpu='4000M' --gpus-per-task='0' --gpus='0' --export=ALL --chdir="$STORAGE_PATH" \
      '/bin/sh' -c 'echo "failed with $DEEPSQUARE_ERROR_CODE"'
  )
  grid_status_1=$?
  set -e
fi
if [ "$grid_status_1" -ne 0 ]; then exit "$grid_status_1"; fi
grid_load_env
srun --ntasks='1' --cpus-per-task='8' --mem-per-cpu='4000M' --gpus-per-task='0' --gpus='0' --export=ALL \
  env 'APPTAINERENV_STORAGE_PATH=/deepsquare' 'APPTAINERENV_DEEPSQUARE_INPUT=/deepsquare/input' 'APPTAINERENV_DEEPSQUARE_OUTPUT=/deepsquare/output' 'APPTAINERENV_DEEPSQUARE_ENV=/deepsquare/env' apptainer run --contain --nv --pwd '/deepsquare' --bind "$STORAGE_PATH:/deepsquare" '/opt/images/tool.sif' '--help'
wait
