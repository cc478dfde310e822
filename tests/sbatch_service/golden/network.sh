#!/bin/bash
# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.
# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.
# Launch bodies and subshells set their own grid_scope on purpose (SC2030, SC2031).
# shellcheck disable=SC2016,SC1003,SC2030,SC2031
true
set -euo pipefail
umask 077

export NTASKS=2
export CPUS_PER_TASK=1
export MEM_PER_CPU=1024
export GPUS=0
export CPUS=2
export MEM=2048

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
# Virtual network 0: the gateway of 3 peers
grid_vnet="$STORAGE_PATH/.grid/vnet0"
mkdir -p -- "$grid_vnet"
python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 0)); print(s.getsockname()[1]); s.close()' >"$grid_vnet/port"
wg genkey >"$grid_vnet/gateway.key"
wg pubkey <"$grid_vnet/gateway.key" >"$grid_vnet/gateway.pub"
ip route get 1 | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}' >"$grid_vnet/endpoint"
wg genkey >"$grid_vnet/peer0.key"
wg pubkey <"$grid_vnet/peer0.key" >"$grid_vnet/peer0.pub"
wg genkey >"$grid_vnet/peer1.key"
wg pubkey <"$grid_vnet/peer1.key" >"$grid_vnet/peer1.pub"
wg genkey >"$grid_vnet/peer2.key"
wg pubkey <"$grid_vnet/peer2.key" >"$grid_vnet/peer2.pub"
{
  printf '[Interface]\nAddress = %s\nListenPort = %s\nPrivateKey = %s\n' '10.0.0.1/24' "$(cat "$grid_vnet/port")" "$(cat "$grid_vnet/gateway.key")"
  printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n' "$(cat "$grid_vnet/peer0.pub")" '10.0.0.2/32'
  printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n' "$(cat "$grid_vnet/peer1.pub")" '10.0.0.3/32'
  printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n' "$(cat "$grid_vnet/peer2.pub")" '10.0.0.4/32'
} >"$grid_vnet/vnet0.conf"
unshare --map-root-user --net --mount /bin/sh -c 'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo "the gateway'"'"'s net0 did not appear" >&2; exit 1; fi
  sleep 0.5
done
echo 1 >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
echo 1 >/proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || true
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
grid_conf="$STORAGE_PATH/.grid/vnet0/vnet0.conf"
trap '"'"'kill "$grid_sleep" 2>/dev/null || true; wg-quick down "$grid_conf" >/dev/null 2>&1 || true'"'"' EXIT
trap '"'"'exit 143'"'"' TERM
trap '"'"'exit 130'"'"' INT
wg-quick up "$grid_conf"
sleep infinity &
grid_sleep=$!
wait "$grid_sleep"
' &
grid_gateway=$!
grid_background+=("$grid_gateway")
grid_tries=0
until [ "$(readlink "/proc/$grid_gateway/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo "the virtual network gateway did not start" >&2; exit 1; fi
  sleep 0.5
done
pasta --config-net --tcp-ports none --udp-ports "$(cat "$grid_vnet/port")" --netns "/proc/$grid_gateway/ns/net" --userns "/proc/$grid_gateway/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f &
grid_background+=("$!")
# Virtual network 1: the gateway of 1 peers
grid_vnet="$STORAGE_PATH/.grid/vnet1"
mkdir -p -- "$grid_vnet"
python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 0)); print(s.getsockname()[1]); s.close()' >"$grid_vnet/port"
wg genkey >"$grid_vnet/gateway.key"
wg pubkey <"$grid_vnet/gateway.key" >"$grid_vnet/gateway.pub"
ip route get 1 | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}' >"$grid_vnet/endpoint"
wg genkey >"$grid_vnet/peer0.key"
wg pubkey <"$grid_vnet/peer0.key" >"$grid_vnet/peer0.pub"
{
  printf '[Interface]\nAddress = %s\nListenPort = %s\nPrivateKey = %s\n' 'fd00:1::1/64' "$(cat "$grid_vnet/port")" "$(cat "$grid_vnet/gateway.key")"
  printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n' "$(cat "$grid_vnet/peer0.pub")" 'fd00:1::2/128'
} >"$grid_vnet/vnet1.conf"
unshare --map-root-user --net --mount /bin/sh -c 'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo "the gateway'"'"'s net0 did not appear" >&2; exit 1; fi
  sleep 0.5
done
echo 1 >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
echo 1 >/proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || true
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
grid_conf="$STORAGE_PATH/.grid/vnet1/vnet1.conf"
trap '"'"'kill "$grid_sleep" 2>/dev/null || true; wg-quick down "$grid_conf" >/dev/null 2>&1 || true'"'"' EXIT
trap '"'"'exit 143'"'"' TERM
trap '"'"'exit 130'"'"' INT
wg-quick up "$grid_conf"
sleep infinity &
grid_sleep=$!
wait "$grid_sleep"
' &
grid_gateway=$!
grid_background+=("$grid_gateway")
grid_tries=0
until [ "$(readlink "/proc/$grid_gateway/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo "the virtual network gateway did not start" >&2; exit 1; fi
  sleep 0.5
done
pasta --config-net --tcp-ports none --udp-ports "$(cat "$grid_vnet/port")" --netns "/proc/$grid_gateway/ns/net" --userns "/proc/$grid_gateway/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f &
grid_background+=("$!")
cd -- "$STORAGE_PATH"
echo "Importing image..."
apptainer --silent pull --disable-cache "$STORAGE_PATH/images/image-629fd82c07cd.sif" 'docker://library/postgres:16'
echo "Image successfully imported!"
echo "Importing image..."
if ! enroot import -o "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" -- 'docker://library/postgres:16' >"$STORAGE_PATH/.grid/import.log" 2>&1; then
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

printf 'Running: %s\n' 'database'
set -m
(
  set +m
  trap 'echo "$?" >"$STORAGE_PATH/.grid/launch-$BASHPID.rc"' EXIT
  set -e
  grid_scope="launch-$BASHPID"
  printf 'Running: %s\n' 'serve'
  grid_load_env
  grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
  printf '[Interface]\nAddress = %s\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\nEndpoint = %s:%s\nPersistentKeepalive = 20\n' '10.0.0.2/24' "$(cat "$STORAGE_PATH/.grid/vnet0/peer0.key")" "$(cat "$STORAGE_PATH/.grid/vnet0/gateway.pub")" '10.0.0.0/24' "$(cat "$STORAGE_PATH/.grid/vnet0/endpoint")" "$(cat "$STORAGE_PATH/.grid/vnet0/port")" >"$grid_step_dir/vnet0.conf"
  printf '[Interface]\nAddress = %s\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\nEndpoint = %s:%s\nPersistentKeepalive = 20\n' 'fd00:1::2/64' "$(cat "$STORAGE_PATH/.grid/vnet1/peer0.key")" "$(cat "$STORAGE_PATH/.grid/vnet1/gateway.pub")" 'fd00:1::/64' "$(cat "$STORAGE_PATH/.grid/vnet1/endpoint")" "$(cat "$STORAGE_PATH/.grid/vnet1/port")" >"$grid_step_dir/vnet1.conf"
  printf '%s' 'nameserver 1.1.1.1
nameserver 2606:4700:4700::1111
' >"$grid_step_dir/resolv.conf"
  GRID_STEP_DIR="$grid_step_dir" srun --job-name='serve' --export=ALL --cpus-per-task=1 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 \
    unshare --map-current-user --map-user=0 --map-group=0 --mount /bin/sh -c 'set -e
PATH="$PATH:/usr/sbin:/sbin"
unshare --map-current-user --net --mount --map-user=0 --map-group=0 /bin/sh -c '"'"'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'"'"'"'"'"'"'net0 did not appear'"'"'"'"'"'"'"'"' >&2; exit 1; fi
  sleep 0.5
done
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
trap '"'"'"'"'"'"'"'"'wg-quick down "$GRID_STEP_DIR/vnet1.conf" >/dev/null 2>&1 || true; wg-quick down "$GRID_STEP_DIR/vnet0.conf" >/dev/null 2>&1 || true'"'"'"'"'"'"'"'"' EXIT
trap '"'"'"'"'"'"'"'"'exit 143'"'"'"'"'"'"'"'"' TERM
trap '"'"'"'"'"'"'"'"'exit 130'"'"'"'"'"'"'"'"' INT
wg-quick up "$GRID_STEP_DIR/vnet0.conf"
wg-quick up "$GRID_STEP_DIR/vnet1.conf"
mount --bind "$GRID_STEP_DIR/resolv.conf" /etc/resolv.conf
/bin/sh -c '"'"'"'"'"'"'"'"'nc -l -p 5432'"'"'"'"'"'"'"'"'
'"'"' &
grid_child=$!
grid_tries=0
until [ "$(readlink "/proc/$grid_child/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'the step'"'"'"'"'"'"'"'"'s network namespace did not start'"'"' >&2; exit 1; fi
  sleep 0.5
done
slirp4netns --configure --mtu=65520 --disable-host-loopback --cidr 169.254.254.0/24 "$grid_child" net0 &
grid_helper=$!
trap '"'"'kill "$grid_child" 2>/dev/null || true; wait "$grid_child" 2>/dev/null || true; kill -9 "$grid_helper" 2>/dev/null || true'"'"' EXIT
trap '"'"'exit 143'"'"' TERM
trap '"'"'exit 130'"'"' INT
wait "$grid_child"
'
  grid_end_scope "$grid_scope"
) &
grid_launch=$!
set +m
printf '%s %s\n' "$grid_launch" 15 >>"$STORAGE_PATH/.grid/scope-$grid_scope"
# shellcheck disable=SC2034
grid_handle_DB="$grid_launch"
printf 'Running: %s\n' 'tunnels'
grid_load_env
grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
printf '%s' '[Interface]
Address = 10.9.0.2/24,fd00:9::2/64
PrivateKey = aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=

[Peer]
PublicKey = d29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGU=
AllowedIPs = 0.0.0.0/0
Endpoint = vpn.example.org:51820
PresharedKey = c2hhcmVkIHNoYXJlZCBzaGFyZWQgc2hhcmVkIHNoYXI=
PersistentKeepalive = 25
' >"$grid_step_dir/wg0.conf"
printf '%s' 's3cr'"'"'et' >"$grid_step_dir/bore1.secret"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='tunnels' --export=ALL --cpus-per-task=1 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 \
  unshare --map-current-user --map-user=0 --mount /bin/sh -c 'set -e
PATH="$PATH:/usr/sbin:/sbin"
unshare --map-current-user --net --mount --map-user=0 /bin/sh -c '"'"'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'"'"'"'"'"'"'net0 did not appear'"'"'"'"'"'"'"'"' >&2; exit 1; fi
  sleep 0.5
done
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
trap '"'"'"'"'"'"'"'"'wg-quick down "$GRID_STEP_DIR/wg0.conf" >/dev/null 2>&1 || true'"'"'"'"'"'"'"'"' EXIT
trap '"'"'"'"'"'"'"'"'exit 143'"'"'"'"'"'"'"'"' TERM
trap '"'"'"'"'"'"'"'"'exit 130'"'"'"'"'"'"'"'"' INT
wg-quick up "$GRID_STEP_DIR/wg0.conf"
dpsproxy --to.addr '"'"'"'"'"'"'"'"'bore.example.org:2200'"'"'"'"'"'"'"'"' --local.addr localhost:8080 --secret "$(cat "$GRID_STEP_DIR/bore1.secret")" -r &
dpsproxy --to.addr '"'"'"'"'"'"'"'"'bore.example.org:2200'"'"'"'"'"'"'"'"' --local.addr localhost:8081 -r &
/bin/sh -c '"'"'"'"'"'"'"'"'./serve --port 8080'"'"'"'"'"'"'"'"'
'"'"' &
grid_child=$!
grid_tries=0
until [ "$(readlink "/proc/$grid_child/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'the step'"'"'"'"'"'"'"'"'s network namespace did not start'"'"' >&2; exit 1; fi
  sleep 0.5
done
pasta --config-net --tcp-ports none --udp-ports none --netns "/proc/$grid_child/ns/net" --userns "/proc/$grid_child/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f &
grid_helper=$!
trap '"'"'kill "$grid_child" 2>/dev/null || true; wait "$grid_child" 2>/dev/null || true; kill -9 "$grid_helper" 2>/dev/null || true'"'"' EXIT
trap '"'"'exit 143'"'"' TERM
trap '"'"'exit 130'"'"' INT
wait "$grid_child"
'
printf 'Running: %s\n' 'client'
grid_load_env
grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"
printf '[Interface]\nAddress = %s\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\nEndpoint = %s:%s\nPersistentKeepalive = 20\n' '10.0.0.3/24' "$(cat "$STORAGE_PATH/.grid/vnet0/peer1.key")" "$(cat "$STORAGE_PATH/.grid/vnet0/gateway.pub")" '10.0.0.0/24' "$(cat "$STORAGE_PATH/.grid/vnet0/endpoint")" "$(cat "$STORAGE_PATH/.grid/vnet0/port")" >"$grid_step_dir/vnet0.conf"
GRID_STEP_DIR="$grid_step_dir" APPTAINER_BIND="$STORAGE_PATH:/deepsquare:rw,$DEEPSQUARE_SHARED_TMP:/deepsquare/tmp:rw,$DEEPSQUARE_SHARED_WORLD_TMP:/deepsquare/world-tmp:rw,$DEEPSQUARE_DISK_TMP:/deepsquare/disk/tmp:rw,$DEEPSQUARE_DISK_WORLD_TMP:/deepsquare/disk/world-tmp:rw" APPTAINERENV_STORAGE_PATH='/deepsquare' APPTAINERENV_DEEPSQUARE_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_TMP='/deepsquare/tmp' APPTAINERENV_DEEPSQUARE_SHARED_WORLD_TMP='/deepsquare/world-tmp' APPTAINERENV_DEEPSQUARE_DISK_TMP='/deepsquare/disk/tmp' APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP='/deepsquare/disk/world-tmp' APPTAINERENV_DEEPSQUARE_INPUT='/deepsquare/input' APPTAINERENV_DEEPSQUARE_OUTPUT='/deepsquare/output' APPTAINERENV_DEEPSQUARE_ENV="/deepsquare/$(basename "$DEEPSQUARE_ENV")" srun --job-name='client' --export=ALL --cpus-per-task=1 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/sh -c 'set -e
PATH="$PATH:/usr/sbin:/sbin"
unshare --map-current-user --net --mount --map-user=0 /bin/sh -c '"'"'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'"'"'"'"'"'"'net0 did not appear'"'"'"'"'"'"'"'"' >&2; exit 1; fi
  sleep 0.5
done
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
trap '"'"'"'"'"'"'"'"'wg-quick down "$GRID_STEP_DIR/vnet0.conf" >/dev/null 2>&1 || true'"'"'"'"'"'"'"'"' EXIT
trap '"'"'"'"'"'"'"'"'exit 143'"'"'"'"'"'"'"'"' TERM
trap '"'"'"'"'"'"'"'"'exit 130'"'"'"'"'"'"'"'"' INT
wg-quick up "$GRID_STEP_DIR/vnet0.conf"
apptainer --silent exec --disable-cache --contain --writable-tmpfs --no-home --nv --pwd '"'"'"'"'"'"'"'"'/'"'"'"'"'"'"'"'"' "$STORAGE_PATH/images/image-629fd82c07cd.sif" /bin/sh -c '"'"'"'"'"'"'"'"'psql -h 10.0.0.2'"'"'"'"'"'"'"'"'
'"'"' &
grid_child=$!
grid_tries=0
until [ "$(readlink "/proc/$grid_child/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'the step'"'"'"'"'"'"'"'"'s network namespace did not start'"'"' >&2; exit 1; fi
  sleep 0.5
done
slirp4netns --configure --mtu=65520 --disable-host-loopback --cidr 169.254.254.0/24 "$grid_child" net0 &
grid_helper=$!
trap '"'"'kill "$grid_child" 2>/dev/null || true; wait "$grid_child" 2>/dev/null || true; kill -9 "$grid_helper" 2>/dev/null || true'"'"' EXIT
trap '"'"'exit 143'"'"' TERM
trap '"'"'exit 130'"'"' INT
wait "$grid_child"
'
printf 'Running: %s\n' 'enroot in a namespace'
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
printf '%s' 'exec "$@"
' >"$grid_step_dir/rc.local"
printf '[Interface]\nAddress = %s\nPrivateKey = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\nEndpoint = %s:%s\nPersistentKeepalive = 20\n' '10.0.0.4/24' "$(cat "$STORAGE_PATH/.grid/vnet0/peer2.key")" "$(cat "$STORAGE_PATH/.grid/vnet0/gateway.pub")" '10.0.0.0/24' "$(cat "$STORAGE_PATH/.grid/vnet0/endpoint")" "$(cat "$STORAGE_PATH/.grid/vnet0/port")" >"$grid_step_dir/vnet0.conf"
GRID_STEP_DIR="$grid_step_dir" srun --job-name='enroot in a namespace' --export=ALL --cpus-per-task=1 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 --gpu-bind=none \
  /bin/bash -c 'set -e
enroot create --name "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" -- "$STORAGE_PATH/images/image-e3e7c2094cac.sqsh" >/dev/null
trap '"'"'enroot remove -f "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" >/dev/null 2>&1 || true'"'"' EXIT
/bin/sh -c '"'"'set -e
PATH="$PATH:/usr/sbin:/sbin"
unshare --map-current-user --net --mount --map-user=0 --map-group=0 /bin/sh -c '"'"'"'"'"'"'"'"'set -e
PATH="$PATH:/usr/sbin:/sbin"
grid_tries=0
until ip link show net0 >/dev/null 2>&1; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'net0 did not appear'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"' >&2; exit 1; fi
  sleep 0.5
done
mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true
trap '"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'wg-quick down "$GRID_STEP_DIR/vnet0.conf" >/dev/null 2>&1 || true'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"' EXIT
trap '"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'exit 143'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"' TERM
trap '"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'exit 130'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"' INT
wg-quick up "$GRID_STEP_DIR/vnet0.conf"
enroot start --conf "$GRID_STEP_DIR/enroot.conf" "container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID" /bin/sh -c '"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'psql -h 10.0.0.2'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'
'"'"'"'"'"'"'"'"' &
grid_child=$!
grid_tries=0
until [ "$(readlink "/proc/$grid_child/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do
  grid_tries=$((grid_tries + 1))
  if [ "$grid_tries" -ge 40 ]; then echo '"'"'"'"'"'"'"'"'the step'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'"'s network namespace did not start'"'"'"'"'"'"'"'"' >&2; exit 1; fi
  sleep 0.5
done
pasta --config-net --tcp-ports none --udp-ports none --netns "/proc/$grid_child/ns/net" --userns "/proc/$grid_child/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f &
grid_helper=$!
trap '"'"'"'"'"'"'"'"'kill "$grid_child" 2>/dev/null || true; wait "$grid_child" 2>/dev/null || true; kill -9 "$grid_helper" 2>/dev/null || true'"'"'"'"'"'"'"'"' EXIT
trap '"'"'"'"'"'"'"'"'exit 143'"'"'"'"'"'"'"'"' TERM
trap '"'"'"'"'"'"'"'"'exit 130'"'"'"'"'"'"'"'"' INT
wait "$grid_child"
'"'"'
'
printf 'Running: %s\n' 'host network ignores dns'
grid_load_env
srun --job-name='host network ignores dns' --export=ALL --cpus-per-task=1 --mem-per-cpu=1024M --gpus-per-task=0 --gpus=0 --ntasks=1 \
  /bin/sh -c 'cat /etc/resolv.conf'
grid_end_scope "$grid_scope"
