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
export MEM_PER_CPU=1024
export GPUS=2
export CPUS=4
export MEM=4096

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
if ! enroot import -o "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" -- 'docker://registry-1.docker.io#library/nginx:1.25' >"$STORAGE_PATH/.grid/import.log" 2>&1; then
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
echo "Importing image..."
apptainer --silent pull --disable-cache "$STORAGE_PATH/images/image-e3e7c2094cac.sif" 'docker://library/bash:latest'
echo "Image successfully imported!"
echo "Importing image..."
if ! enroot import -o "$STORAGE_PATH/images/image-0a5d6baa9455.sqsh" -- 'docker://bash:latest' >"$STORAGE_PATH/.grid/import.log" 2>&1; then
  cat "$STORAGE_PATH/.grid/import.log"
fi
grid_tries=1
until file "$STORAGE_PATH/images/image-0a5d6baa9455.sqsh" | grep -q "Squashfs filesystem"; do
  if [ "$grid_tries" -ge 10 ]; then
    echo "Image import failure (corrupted image). Please try again."
    exit 1
  fi
  echo "Image is not complete. Wait a few seconds... ($grid_tries/10)"
  sleep 10
  grid_tries=$((grid_tries + 1))
done
echo "Image successfully imported!"
export JOB_NOTE='a multi-line
job value'

printf 'Running: %s\n' 'hosted'
grid_load_env
APPTAINER_BIND="$STORAGE_PATH:/deepsquare:rw,$DEEPSQUARE_SHARED_TMP:/deepsquare/tmp:rw,$DEEPSQUARE_SHARED_WORLD_TMP:/deepsquare/world-tmp:rw,$DEEPSQUARE_DISK_TMP:/deepsquare/disk/tmp:rw,$DEEPSQUARE_DISK_WORLD_TMP:/deepsquare/disk/world-tmp:rw,/tmp/.X11-unix:/tmp/.X11-unix:ro,/opt/models/stable-diffusion:/models:ro,/data/scratch:/scratch" APPTAINERENV_STORAGE_PATH='/deepsquare' APPTAINERENV_DEEPSQUARE_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_WORLD_TMP='/deepsquare/world-tmp' APPTAINERENV_DEEPSQUARE_DISK_TMP='/deepsquare/disk/tmp' APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP='/deepsquare/disk/world-tmp' APPTAINERENV_DEEPSQUARE_INPUT='/deepsquare/input' APPTAINERENV_DEEPSQUARE_OUTPUT='/deepsquare/output' APPTAINERENV_DEEPSQUARE_ENV="/deepsquare/$(basename "$DEEPSQUARE_ENV")" srun --job-name='hosted' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=1 --gpus=1 --ntasks=1 --gpu-bind=none \
  apptainer --silent exec --disable-cache --contain --writable-tmpfs --no-home --nv --pwd '/' '/opt/software/registry-1.deepsquare.run/library/stable-diffusion:latest' /bin/bash -c 'python /app/txt2img.py --outdir "$DEEPSQUARE_OUTPUT"'
printf 'Running: %s\n' 'hosted without registry'
grid_load_env
APPTAINER_BIND="$STORAGE_PATH:/deepsquare:rw,$DEEPSQUARE_SHARED_TMP:/deepsquare/tmp:rw,$DEEPSQUARE_SHARED_WORLD_TMP:/deepsquare/world-tmp:rw,$DEEPSQUARE_DISK_TMP:/deepsquare/disk/tmp:rw,$DEEPSQUARE_DISK_WORLD_TMP:/deepsquare/disk/world-tmp:rw" APPTAINERENV_STORAGE_PATH='/deepsquare' APPTAINERENV_DEEPSQUARE_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_WORLD_TMP='/deepsquare/world-tmp' APPTAINERENV_DEEPSQUARE_DISK_TMP='/deepsquare/disk/tmp' APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP='/deepsquare/disk/world-tmp' APPTAINERENV_DEEPSQUARE_INPUT='/deepsquare/input' APPTAINERENV_DEEPSQUARE_OUTPUT='/deepsquare/output' APPTAINERENV_DEEPSQUARE_ENV="/deepsquare/$(basename "$DEEPSQUARE_ENV")" srun --job-name='hosted without registry' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  apptainer --silent run --disable-cache --contain --writable-tmpfs --no-home --nv --pwd '/' '/opt/software/tools/blender:3.4'
printf 'Running: %s\n' 'sif from the input'
grid_load_env
APPTAINER_BIND="$STORAGE_PATH:/deepsquare:rw,$DEEPSQUARE_SHARED_TMP:/deepsquare/tmp:rw,$DEEPSQUARE_SHARED_WORLD_TMP:/deepsquare/world-tmp:rw,$DEEPSQUARE_DISK_TMP:/deepsquare/disk/tmp:rw,$DEEPSQUARE_DISK_WORLD_TMP:/deepsquare/disk/world-tmp:rw" APPTAINERENV_STORAGE_PATH='/deepsquare' APPTAINERENV_DEEPSQUARE_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_WORLD_TMP='/deepsquare/world-tmp' APPTAINERENV_DEEPSQUARE_DISK_TMP='/deepsquare/disk/tmp' APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP='/deepsquare/disk/world-tmp' APPTAINERENV_DEEPSQUARE_INPUT='/deepsquare/input' APPTAINERENV_DEEPSQUARE_OUTPUT='/deepsquare/output' APPTAINERENV_DEEPSQUARE_ENV="/deepsquare/$(basename "$DEEPSQUARE_ENV")" srun --job-name='sif from the input' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  apptainer --silent run --disable-cache --contain --writable-tmpfs --nv --pwd '/app' "$STORAGE_PATH"'/input/tool.sif' '--port' '8080' 'two words'
printf 'Running: %s\n' 'squashfs from the input'
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
  echo '"'"'/opt/data /data none x-create=auto,bind,rw'"'"'
}

hooks() {
  cp -- "$GRID_STEP_DIR/rc.local" "${ENROOT_ROOTFS}/etc/rc.local"
}
' >"$grid_step_dir/enroot.conf"
printf '%s' 'export JOB_NOTE='"'"'a multi-line
job value'"'"'
export STEP_VALUE='"'"'it'"'"'"'"'"'"'"'"'s "quoted"'"'"'
exec "$@"
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='squashfs from the input' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH"'"'"'/input/base.sqsh'"'"' >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" /bin/sh -c '"'"'./run.sh'"'"'
'
printf 'Running: %s\n' 'enroot entrypoint in a working directory'
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
printf '%s' 'export JOB_NOTE='"'"'a multi-line
job value'"'"'
mkdir -p -- '"'"'/srv'"'"' && cd -- '"'"'/srv'"'"' || { echo "change dir to working directory failed"; exit 1; }
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='enroot entrypoint in a working directory' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" '"'"'-g'"'"' '"'"'daemon off;'"'"'
'
printf 'Running: %s\n' 'enroot default command'
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
printf '%s' 'export JOB_NOTE='"'"'a multi-line
job value'"'"'
exec "$@"
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='enroot default command' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-629fd82c07cd.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID"
'
printf 'Running: %s\n' 'mapped ids on the host'
grid_load_env
srun --job-name='mapped ids on the host' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 \
  unshare --map-current-user --map-user=1337 --map-group=1337 --mount /bin/sh -c 'id'
printf 'Running: %s\n' 'mapped root in apptainer'
grid_load_env
APPTAINER_BIND="$STORAGE_PATH:/deepsquare:rw,$DEEPSQUARE_SHARED_TMP:/deepsquare/tmp:rw,$DEEPSQUARE_SHARED_WORLD_TMP:/deepsquare/world-tmp:rw,$DEEPSQUARE_DISK_TMP:/deepsquare/disk/tmp:rw,$DEEPSQUARE_DISK_WORLD_TMP:/deepsquare/disk/world-tmp:rw" APPTAINERENV_STORAGE_PATH='/deepsquare' APPTAINERENV_DEEPSQUARE_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_WORLD_TMP='/deepsquare/world-tmp' APPTAINERENV_DEEPSQUARE_DISK_TMP='/deepsquare/disk/tmp' APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP='/deepsquare/disk/world-tmp' APPTAINERENV_DEEPSQUARE_INPUT='/deepsquare/input' APPTAINERENV_DEEPSQUARE_OUTPUT='/deepsquare/output' APPTAINERENV_DEEPSQUARE_ENV="/deepsquare/$(basename "$DEEPSQUARE_ENV")" srun --job-name='mapped root in apptainer' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  unshare --map-current-user --map-user=0 --map-group=0 --mount apptainer --silent exec --disable-cache --contain --writable-tmpfs --no-home --nv --pwd '/' "$STORAGE_PATH/images/image-e3e7c2094cac.sif" /bin/sh -c 'id'
printf 'Running: %s\n' 'mapped group in enroot'
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
printf '%s' 'export JOB_NOTE='"'"'a multi-line
job value'"'"'
exec "$@"
' >"$grid_step_dir/rc.local"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='mapped group in enroot' --export=ALL --cpus-per-task=2 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-0a5d6baa9455.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
unshare --map-current-user --map-group=100 --mount enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" /bin/sh -c '"'"'id'"'"'
'
grid_end_scope "$grid_scope"
