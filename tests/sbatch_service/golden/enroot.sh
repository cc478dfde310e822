#!/bin/bash
# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.
# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.
# shellcheck disable=SC2016,SC1003
true
set -euo pipefail
umask 077

export NTASKS='2'
export CPUS_PER_TASK='2'
export MEM_PER_CPU='2048'
export GPUS='0'
export CPUS='4'
export MEM='8192'

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
grid_enroot_runner='set -eu
grid_name="$1-${SLURM_JOB_ID:-0}-${SLURM_STEP_ID:-0}-${SLURM_PROCID:-0}"
grid_image="$2"
shift 2
grid_options=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  grid_options+=("$1")
  shift
done
shift
while IFS= read -r grid_line || [ -n "$grid_line" ]; do
  grid_key="${grid_line%%=*}"
  case "$grid_key" in
    PATH | LD_LIBRARY_PATH | IFS | BASH_ENV | ENV | SHELLOPTS | BASHOPTS | STORAGE_PATH | DEEPSQUARE_* | SLURM_* | GRID_* | grid_*) continue ;;
  esac
  if [[ "$grid_line" == *=* && "$grid_key" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]]; then
    grid_options+=(--env "$grid_key")
  fi
done <"$DEEPSQUARE_ENV"
enroot create --name "$grid_name" "$grid_image"
trap '"'"'enroot remove -f "$grid_name"'"'"' EXIT
enroot start "${grid_options[@]}" "$grid_name" "$@"
'
enroot import -o "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" -- 'docker://registry-1.docker.io#library/ubuntu:22.04'
export ENROOT_CONFIG_PATH="$STORAGE_PATH/enroot"
mkdir -p -- "$ENROOT_CONFIG_PATH"
printf 'machine %s login %s password %s\n' 'registry.example.com' 'robot' 's3cr'"'"'et' >>"$ENROOT_CONFIG_PATH/.credentials"
enroot import -o "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" -- 'docker://registry.example.com#team/tool:1.0'

grid_items_1=('a' 'b')
grid_pids_1=()
for item in "${grid_items_1[@]}"; do
  (
    set -e
    export item
    grid_load_env
    srun --ntasks='1' --cpus-per-task='2' --mem-per-cpu='2048M' --export=ALL \
      env ENROOT_MOUNT_HOME='n' /bin/bash -c "$grid_enroot_runner" grid-enroot 'step-0a5d6baa9455' "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" --rw --mount "$STORAGE_PATH:/deepsquare" --env 'STORAGE_PATH=/deepsquare' --env 'DEEPSQUARE_INPUT=/deepsquare/input' --env 'DEEPSQUARE_OUTPUT=/deepsquare/output' --env 'DEEPSQUARE_ENV=/deepsquare/env' --env NTASKS --env CPUS_PER_TASK --env MEM_PER_CPU --env GPUS --env CPUS --env MEM --env item --env 'FOO=bar' -- '/bin/sh' -c 'cd '"'"'/deepsquare'"'"' || exit 1
echo $item $FOO'
  ) &
  grid_pids_1+=("$!")
done
grid_status_1=0
for grid_pid in "${grid_pids_1[@]}"; do
  wait "$grid_pid" || grid_status_1=$?
done
if [ "$grid_status_1" -ne 0 ]; then exit "$grid_status_1"; fi
grid_load_env
srun --ntasks='1' --cpus-per-task='2' --mem-per-cpu='2048M' --export=ALL \
  env ENROOT_MOUNT_HOME='y' /bin/bash -c "$grid_enroot_runner" grid-enroot 'step-f72842485e3a' "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" --mount "$STORAGE_PATH:/deepsquare" --mount '/tmp/.X11-unix:/tmp/.X11-unix' --env DISPLAY --env 'STORAGE_PATH=/deepsquare' --env 'DEEPSQUARE_INPUT=/deepsquare/input' --env 'DEEPSQUARE_OUTPUT=/deepsquare/output' --env 'DEEPSQUARE_ENV=/deepsquare/env' --env NTASKS --env CPUS_PER_TASK --env MEM_PER_CPU --env GPUS --env CPUS --env MEM -- '/bin/bash' -c 'cd '"'"'/work'"'"' || exit 1
tool --version'
grid_load_env
srun --ntasks='1' --cpus-per-task='2' --mem-per-cpu='2048M' --export=ALL \
  env ENROOT_MOUNT_HOME='n' /bin/bash -c "$grid_enroot_runner" grid-enroot 'step-7c6582e2e662' '/opt/images/base.sqsh' --rw --mount "$STORAGE_PATH:/deepsquare" --env 'STORAGE_PATH=/deepsquare' --env 'DEEPSQUARE_INPUT=/deepsquare/input' --env 'DEEPSQUARE_OUTPUT=/deepsquare/output' --env 'DEEPSQUARE_ENV=/deepsquare/env' --env NTASKS --env CPUS_PER_TASK --env MEM_PER_CPU --env GPUS --env CPUS --env MEM -- 'serve' '--port' '8080' 'two words'
wait
