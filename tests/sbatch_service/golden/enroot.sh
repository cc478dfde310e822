#!/bin/bash
# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.
# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.
# Launch bodies and subshells set their own grid_scope on purpose (SC2030, SC2031).
# shellcheck disable=SC2016,SC1003,SC2030,SC2031
true
set -euo pipefail
umask 077

export NTASKS=2
export CPUS_PER_TASK=2
export MEM_PER_CPU=2048
export GPUS=0
export CPUS=4
export MEM=8192

grid_reserved() {
  case "$1" in
    index | item | grid_*) return 0 ;;
  esac
  case "${1^^}" in
    BASHOPTS | BASH_ENV | CDPATH | ENV | EXECIGNORE | FUNCNEST | GLOBIGNORE | IFS | LD_LIBRARY_PATH | LD_PRELOAD | PATH | POSIXLY_CORRECT | PROMPT_COMMAND | PS4 | SHELLOPTS | STORAGE_PATH | TMOUT | DEEPSQUARE_* | SLURM_* | GRID_* | LD_* | BASH_* | ENROOT_* | APPTAINER_* | APPTAINERENV_* | SINGULARITY_* | SINGULARITYENV_*) return 0 ;;
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
  while [ ! -e "$status_file" ] && kill -0 "$1" 2>/dev/null; do
    sleep 0.2
  done
  if [ -e "$status_file" ]; then
    return "$(cat "$status_file")"
  fi
  return 1
}

# Send a signal to a launched step and everything it started (its own process group).
grid_signal() {
  kill -s "$1" -- "-$2" 2>/dev/null || true
}

# Wait until a launched step has ended, whichever shell started it: its whole process group, so an
# srun still cancelling its Slurm step after a signal is waited for too.
grid_reap() {
  wait "$1" 2>/dev/null || true
  while kill -0 -- "-$1" 2>/dev/null; do
    sleep 0.1
  done
}

# A launch body or the job ends: signal the steps it launched (signalOnParentStepExit), wait for them.
grid_end_scope() {
  local file="$STORAGE_PATH/.grid/scope-$1" pid signal
  [ -e "$file" ] || return 0
  while read -r pid signal; do
    if [ "$signal" -ne 0 ]; then
      grid_signal "$signal" "$pid"
    fi
  done <"$file"
  while read -r pid signal; do
    grid_reap "$pid"
  done <"$file"
}

grid_cleanup() {
  if declare -F grid_log_stop >/dev/null; then grid_log_stop; fi
  local scope pid signal tries
  for scope in "$STORAGE_PATH"/.grid/scope-*; do
    [ -e "$scope" ] || continue
    while read -r pid signal; do
      grid_signal TERM "$pid"
    done <"$scope"
  done
  for pid in "${grid_background[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for scope in "$STORAGE_PATH"/.grid/scope-*; do
    [ -e "$scope" ] || continue
    while read -r pid signal; do
      tries=0
      while kill -0 -- "-$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do
        sleep 0.1
        tries=$((tries + 1))
      done
      grid_signal KILL "$pid"
    done <"$scope"
  done
  wait
  chmod -R u+rwX -- "$STORAGE_PATH" 2>/dev/null || true
  rm -rf -- "$STORAGE_PATH"
}

grid_uid="$(id -u)"
STORAGE_PATH='/opt/cache/shared'/"$grid_uid/job-${SLURM_JOB_ID:-$$}"
readonly STORAGE_PATH
export STORAGE_PATH
export DEEPSQUARE_INPUT="$STORAGE_PATH/input"
export DEEPSQUARE_OUTPUT="$STORAGE_PATH/output"
export DEEPSQUARE_ENV="$STORAGE_PATH/env"
export DEEPSQUARE_TMP='/opt/cache/persistent/user-'"$grid_uid"
export DEEPSQUARE_SHARED_TMP="$DEEPSQUARE_TMP"
export DEEPSQUARE_SHARED_WORLD_TMP='/opt/cache/world-tmp'
export DEEPSQUARE_DISK_TMP='/opt/cache/disk/tmp/user-'"$grid_uid"
export DEEPSQUARE_DISK_WORLD_TMP='/opt/cache/disk/world-tmp'
grid_scope=job
grid_background=()
trap grid_cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p -- "$DEEPSQUARE_INPUT" "$DEEPSQUARE_OUTPUT" "$STORAGE_PATH/.grid" "$STORAGE_PATH/images" "$STORAGE_PATH/tmp" "$STORAGE_PATH/world-tmp" "$STORAGE_PATH/disk/tmp" "$STORAGE_PATH/disk/world-tmp"
chmod 700 -- "$STORAGE_PATH"
grid_cache_fallback() {
  echo "note: the site's cache folder ${!1} is not available: $2 stands in for it" >&2
  printf -v "$1" '%s' "$2"
}
if ! { mkdir -p -- "$DEEPSQUARE_TMP" && chmod 700 -- "$DEEPSQUARE_TMP"; } 2>/dev/null; then
  grid_cache_fallback DEEPSQUARE_TMP "$STORAGE_PATH/tmp"
  DEEPSQUARE_SHARED_TMP="$DEEPSQUARE_TMP"
fi
[ -d "$DEEPSQUARE_SHARED_WORLD_TMP" ] || grid_cache_fallback DEEPSQUARE_SHARED_WORLD_TMP "$STORAGE_PATH/world-tmp"
[ -d "$DEEPSQUARE_DISK_WORLD_TMP" ] || grid_cache_fallback DEEPSQUARE_DISK_WORLD_TMP "$STORAGE_PATH/disk/world-tmp"
if ! { mkdir -p -- "$DEEPSQUARE_DISK_TMP" && [ -w "$DEEPSQUARE_DISK_TMP" ]; } 2>/dev/null; then
  grid_cache_fallback DEEPSQUARE_DISK_TMP "$STORAGE_PATH/disk/tmp"
fi
: >"$DEEPSQUARE_ENV"
for grid_node in $(scontrol show hostnames "$SLURM_NODELIST"); do
  srun --job-name=prepare-dir -N 1-1 -n 1 --gpus=0 -w "$grid_node" \
    sh -c 'mkdir -p -- "$DEEPSQUARE_DISK_TMP" && chmod 700 -- "$DEEPSQUARE_DISK_TMP"'
done
cd -- "$STORAGE_PATH"
echo "Importing image..."
if ! enroot import -o "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" -- 'docker://registry-1.docker.io#library/ubuntu:22.04' >"$STORAGE_PATH/.grid/import.log" 2>&1; then
  cat "$STORAGE_PATH/.grid/import.log"
fi
grid_tries=1
until file "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" | grep -q "Squashfs filesystem"; do
  if [ "$grid_tries" -ge 10 ]; then
    echo "Image import failure (corrupted image). Please try again."
    exit 1
  fi
  echo "Image is not complete. Wait a few seconds... ($grid_tries/10)"
  sleep 10
  grid_tries=$((grid_tries + 1))
done
echo "Image successfully imported!"
export ENROOT_CONFIG_PATH="$STORAGE_PATH/enroot"
mkdir -p -- "$ENROOT_CONFIG_PATH"
printf 'machine %s login "%s" password "%s"\n' 'registry.example.com' 'robot' 's3cr'"'"'et' >>"$ENROOT_CONFIG_PATH/.credentials"
echo "Importing image..."
if ! enroot import -o "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" -- 'docker://registry.example.com#team/tool:1.0' >"$STORAGE_PATH/.grid/import.log" 2>&1; then
  cat "$STORAGE_PATH/.grid/import.log"
fi
grid_tries=1
until file "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" | grep -q "Squashfs filesystem"; do
  if [ "$grid_tries" -ge 10 ]; then
    echo "Image import failure (corrupted image). Please try again."
    exit 1
  fi
  echo "Image is not complete. Wait a few seconds... ($grid_tries/10)"
  sleep 10
  grid_tries=$((grid_tries + 1))
done
echo "Image successfully imported!"

printf 'Running: %s\n' 'loop'
grid_items_1=('a' 'b')
grid_pids_1=()
for grid_item_1 in "${grid_items_1[@]}"; do
  (
    set -e
    export item="$grid_item_1"
    printf 'Running: %s\n' 'echo'
    grid_load_env
    grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
    printf '%s' '#ENROOT_REMAP_ROOT=n
#ENROOT_ROOTFS_WRITABLE=y
#ENROOT_MOUNT_HOME=n

environ() {
  local grid_variable
  while IFS= read -r -d '"'"''"'"' grid_variable; do
    [[ "$grid_variable" == *$'"'"'\n'"'"'* ]] || printf '"'"'%s\n'"'"' "$grid_variable"
  done < <(env -0)
  cat "${ENROOT_ROOTFS}/etc/environment" 2>/dev/null || true
  echo "STORAGE_PATH=/deepsquare"
  echo "DEEPSQUARE_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_WORLD_TMP=/deepsquare/world-tmp"
  echo "DEEPSQUARE_DISK_TMP=/deepsquare/disk/tmp"
  echo "DEEPSQUARE_DISK_WORLD_TMP=/deepsquare/disk/world-tmp"
  echo "DEEPSQUARE_INPUT=/deepsquare/input"
  echo "DEEPSQUARE_OUTPUT=/deepsquare/output"
  echo "DEEPSQUARE_ENV=/deepsquare/$(basename "$DEEPSQUARE_ENV")"
}

mounts() {
  echo "$STORAGE_PATH /deepsquare none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_TMP /deepsquare/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_WORLD_TMP /deepsquare/world-tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_TMP /deepsquare/disk/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_WORLD_TMP /deepsquare/disk/world-tmp none x-create=dir,bind,rw"
}

hooks() {
  cp -- "$GRID_STEP_DIR/rc.local" "${ENROOT_ROOTFS}/etc/rc.local"
}
' >"$grid_step_dir/enroot.conf"
    printf '%s' 'export FOO='"'"'bar'"'"'
exec "$@"
' >"$grid_step_dir/rc.local"
    GRID_STEP_DIR="$grid_step_dir" srun --job-name='echo' --export=ALL --cpus-per-task=2 --mem-per-cpu=2048M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
      /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" /bin/sh -c '"'"'echo $item $FOO'"'"'
'
  ) &
  grid_pids_1+=("$!")
done
grid_status_1=0
for grid_pid in "${grid_pids_1[@]}"; do
  wait "$grid_pid" || grid_status_1=$?
done
if [ "$grid_status_1" -ne 0 ]; then exit "$grid_status_1"; fi
printf 'Running: %s\n' 'private'
grid_load_env
grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
printf '%s' '#ENROOT_REMAP_ROOT=n
#ENROOT_ROOTFS_WRITABLE=n
#ENROOT_MOUNT_HOME=y

environ() {
  local grid_variable
  while IFS= read -r -d '"'"''"'"' grid_variable; do
    [[ "$grid_variable" == *$'"'"'\n'"'"'* ]] || printf '"'"'%s\n'"'"' "$grid_variable"
  done < <(env -0)
  cat "${ENROOT_ROOTFS}/etc/environment" 2>/dev/null || true
  echo "STORAGE_PATH=/deepsquare"
  echo "DEEPSQUARE_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_WORLD_TMP=/deepsquare/world-tmp"
  echo "DEEPSQUARE_DISK_TMP=/deepsquare/disk/tmp"
  echo "DEEPSQUARE_DISK_WORLD_TMP=/deepsquare/disk/world-tmp"
  echo "DEEPSQUARE_INPUT=/deepsquare/input"
  echo "DEEPSQUARE_OUTPUT=/deepsquare/output"
  echo "DEEPSQUARE_ENV=/deepsquare/$(basename "$DEEPSQUARE_ENV")"
}

mounts() {
  echo "$STORAGE_PATH /deepsquare none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_TMP /deepsquare/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_WORLD_TMP /deepsquare/world-tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_TMP /deepsquare/disk/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_WORLD_TMP /deepsquare/disk/world-tmp none x-create=dir,bind,rw"
  echo "/tmp/.X11-unix /tmp/.X11-unix none x-create=dir,bind,ro"
}

hooks() {
  cp -- "$GRID_STEP_DIR/rc.local" "${ENROOT_ROOTFS}/etc/rc.local"
}
' >"$grid_step_dir/enroot.conf"
printf '%s' 'mkdir -p -- '"'"'/work'"'"' && cd -- '"'"'/work'"'"' || { echo "change dir to working directory failed"; exit 1; }
exec "$@"
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='private' --export=ALL --cpus-per-task=2 --mem-per-cpu=2048M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" /bin/bash -c '"'"'tool --version'"'"'
'
printf 'Running: %s\n' 'local-image'
grid_load_env
grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
printf '%s' '#ENROOT_REMAP_ROOT=n
#ENROOT_ROOTFS_WRITABLE=y
#ENROOT_MOUNT_HOME=n

environ() {
  local grid_variable
  while IFS= read -r -d '"'"''"'"' grid_variable; do
    [[ "$grid_variable" == *$'"'"'\n'"'"'* ]] || printf '"'"'%s\n'"'"' "$grid_variable"
  done < <(env -0)
  cat "${ENROOT_ROOTFS}/etc/environment" 2>/dev/null || true
  echo "STORAGE_PATH=/deepsquare"
  echo "DEEPSQUARE_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_TMP=/deepsquare/tmp"
  echo "DEEPSQUARE_SHARED_WORLD_TMP=/deepsquare/world-tmp"
  echo "DEEPSQUARE_DISK_TMP=/deepsquare/disk/tmp"
  echo "DEEPSQUARE_DISK_WORLD_TMP=/deepsquare/disk/world-tmp"
  echo "DEEPSQUARE_INPUT=/deepsquare/input"
  echo "DEEPSQUARE_OUTPUT=/deepsquare/output"
  echo "DEEPSQUARE_ENV=/deepsquare/$(basename "$DEEPSQUARE_ENV")"
}

mounts() {
  echo "$STORAGE_PATH /deepsquare none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_TMP /deepsquare/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_SHARED_WORLD_TMP /deepsquare/world-tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_TMP /deepsquare/disk/tmp none x-create=dir,bind,rw"
  echo "$DEEPSQUARE_DISK_WORLD_TMP /deepsquare/disk/world-tmp none x-create=dir,bind,rw"
}

hooks() {
  cp -- "$GRID_STEP_DIR/rc.local" "${ENROOT_ROOTFS}/etc/rc.local"
}
' >"$grid_step_dir/enroot.conf"
printf '%s' '
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='local-image' --export=ALL --cpus-per-task=2 --mem-per-cpu=2048M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH"'"'"'/opt/images/base.sqsh'"'"' >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" '"'"'serve'"'"' '"'"'--port'"'"' '"'"'8080'"'"' '"'"'two words'"'"'
'
grid_end_scope "$grid_scope"
