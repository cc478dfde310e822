#!/usr/bin/env bash
# A real single-node Slurm cluster with accounting on this machine, plus an sshd on loopback acting
# as its login node: munged, MariaDB, slurmdbd, slurmctld, slurmd and sshd, started directly (no
# systemd), with every file under one scratch folder.
#
#   scripts/cluster.sh [--release R] up          start whatever is not running (fast when everything is up)
#   scripts/cluster.sh [--release R] down        stop everything this script started
#   scripts/cluster.sh [--release R] status      one line per component; exit status 0 only when all are up
#   scripts/cluster.sh [--release R] info        the connection details as JSON (written by `up`)
#   scripts/cluster.sh [--release R] stop-ctld   stop slurmctld alone (to rehearse an outage)
#   scripts/cluster.sh [--release R] start-ctld  start slurmctld again; its jobs survive in StateSaveLocation
#
# Releases: `bookworm` (default) is this machine's own Slurm 22.05. `trixie` (Slurm 24.11) and `forky`
# (the Slurm of Debian's next release) run in a Debian root made with debootstrap under
# <dir>/root (built once, then reused), with /proc, /sys, /dev, /tmp and /var/tmp of this machine
# mounted in, so job folders have the same paths inside and out. Their daemons, munged and sshd run
# chrooted there with their own ports and munge key; their client commands run as
# `chroot <dir>/root COMMAND` (cluster.json's `command_prefix`) or through their sshd.
#
# Settings (environment): GRID_CLUSTER_DIR (default /var/lib/grid-cluster, /var/lib/grid-cluster-<R>
# for another release), GRID_CLUSTER_PORT_BASE (default 16800, trixie 16840, forky 16870: slurmctld
# +17, slurmd +18, slurmdbd +19, MariaDB +6, sshd +22), GRID_CLUSTER_CPUS (default 8),
# GRID_CLUSTER_MEMORY_MB (default 8000), GRID_CLUSTER_GPUS (default 2), GRID_CLUSTER_MIRROR (the
# Debian mirror debootstrap uses, default http://deb.debian.org/debian). The node's CPUs, memory and
# GPUs are declared (SlurmdParameters=config_overrides), so jobs may share the real cores.
# Client commands find the configuration through /etc/slurm/slurm.conf (of the root they run in), a
# link to the scratch copy.
set -euo pipefail

RELEASE=bookworm
if [ "${1:-}" = "--release" ]; then
    RELEASE="${2:?--release needs a name}"
    shift 2
fi
case "$RELEASE" in
    bookworm) DEFAULT_BASE=/var/lib/grid-cluster DEFAULT_PORT_BASE=16800 SUITE="" SUITE_SCRIPT="" ;;
    trixie) DEFAULT_BASE=/var/lib/grid-cluster-trixie DEFAULT_PORT_BASE=16840 SUITE=trixie SUITE_SCRIPT=trixie ;;
    # The debootstrap of Debian 12 has no script named forky: sid's is the same.
    forky) DEFAULT_BASE=/var/lib/grid-cluster-forky DEFAULT_PORT_BASE=16870 SUITE=forky SUITE_SCRIPT=sid ;;
    *) echo "unknown release $RELEASE (bookworm, trixie, forky)" >&2; exit 2 ;;
esac

BASE="${GRID_CLUSTER_DIR:-$DEFAULT_BASE}"
PORT_BASE="${GRID_CLUSTER_PORT_BASE:-$DEFAULT_PORT_BASE}"
MIRROR="${GRID_CLUSTER_MIRROR:-http://deb.debian.org/debian}"
CTLD_PORT=$((PORT_BASE + 17))
SLURMD_PORT=$((PORT_BASE + 18))
DBD_PORT=$((PORT_BASE + 19))
DB_PORT=$((PORT_BASE + 6))
SSH_PORT=$((PORT_BASE + 22))
CPUS="${GRID_CLUSTER_CPUS:-8}"
MEMORY_MB="${GRID_CLUSTER_MEMORY_MB:-8000}"
GPUS="${GRID_CLUSTER_GPUS:-2}"
CLUSTER_NAME="grid"
PARTITION="grid"
NODE_NAME="grid-node1"
# Login users: the service account (default job user), an admin that is a Slurm operator (it may
# raise a running job's time limit), and two per-wallet users named by the default template
# "grid-{hex:.12}" from the first two accounts of the well-known test mnemonic.
SERVICE_USER="grid-svc"
ADMIN_USER="grid-admin"
WALLET_USERS=(grid-f39fd6e51aad grid-70997970c518)

# ROOTFS is the Debian root of another release ("" for this machine's own Slurm). Paths below are as
# the daemons see them; "$ROOTFS$path" is the same file seen from this machine.
if [ -n "$SUITE" ]; then
    ROOTFS="$BASE/root"
    VIEW_BASE=/var/lib/grid-cluster
else
    ROOTFS=""
    VIEW_BASE="$BASE"
fi
ROOTFS_PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server openssh-server)
ROOTFS_STAMP="$BASE/root/.grid-rootfs"
ROOTFS_WANT="suite=$SUITE packages=${ROOTFS_PACKAGES[*]} layout=1"
# Folders of this machine mounted at the same place in the root.
SHARED_FOLDERS=(/tmp /var/tmp)

ETC="$VIEW_BASE/etc"
RUN="$VIEW_BASE/run"
LOG="$VIEW_BASE/log"
SSH_DIR="$VIEW_BASE/ssh"
DB_DIR="$VIEW_BASE/mysql"
DB_SOCKET="$DB_DIR/mysqld.sock"
SLURM_CONF_FILE="$ETC/slurm.conf"
export SLURM_CONF="$SLURM_CONF_FILE"

log() { printf '[cluster%s] %s\n' "${SUITE:+ $RELEASE}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A command of the cluster's release: in its root, or here.
run_in() {
    if [ -n "$ROOTFS" ]; then
        chroot "$ROOTFS" "$@"
    else
        "$@"
    fi
}

pid_alive() { [ -f "$ROOTFS$1" ] && kill -0 "$(cat "$ROOTFS$1")" 2>/dev/null; }

# Wait until "$@" succeeds, up to $timeout seconds, polling every 0.2 s.
wait_for() {
    local timeout="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up within ${timeout}s (logs in $ROOTFS$LOG)"
        sleep 0.2
    done
}

# Replace a file only when its content changes; returns 0 when it changed.
install_if_changed() {
    local target="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat > "$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" "$tmp" "$target.new"
    mv -f "$target.new" "$target"
    rm -f "$tmp"
    return 0
}

# ---------------------------------------------------------------------------------------- checks
munge_up() { run_in munge -n 2>/dev/null | run_in unmunge >/dev/null 2>&1; }
db_up() { [ -S "$ROOTFS$DB_SOCKET" ] && run_in mariadb-admin --no-defaults -S "$DB_SOCKET" -u root ping >/dev/null 2>&1; }
dbd_up() { pid_alive "$RUN/slurmdbd.pid" && (exec 3<>"/dev/tcp/127.0.0.1/$DBD_PORT") 2>/dev/null; }
ctld_up() { pid_alive "$RUN/slurmctld.pid" && run_in scontrol ping 2>/dev/null | grep -q 'is UP'; }
slurmd_up() {
    pid_alive "$RUN/slurmd.pid" || return 1
    local state
    state="$(run_in sinfo -h -n "$NODE_NAME" -o '%T' 2>/dev/null)" || return 1
    case "$state" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}
sshd_up() { pid_alive "$RUN/sshd.pid" && (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null; }
accounting_ready() { run_in sacctmgr -n -P show user "$ADMIN_USER" format=adminlevel 2>/dev/null | grep -qi operator; }
mounts_ready() {
    [ -z "$ROOTFS" ] && return 0
    local folder
    for folder in /proc /sys /dev /dev/pts "${SHARED_FOLDERS[@]}"; do
        mountpoint -q "$ROOTFS$folder" || return 1
    done
}

all_up() { mounts_ready && munge_up && db_up && dbd_up && ctld_up && slurmd_up && sshd_up && accounting_ready; }

# ---------------------------------------------------------------------------------------- the root
# Mounted in this order, unmounted in the reverse one.
mount_root() {
    local folder
    mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
    for folder in /sys /dev /dev/pts "${SHARED_FOLDERS[@]}"; do
        mkdir -p "$ROOTFS$folder"
        mountpoint -q "$ROOTFS$folder" || mount --bind "$folder" "$ROOTFS$folder"
    done
}

unmount_root() {
    local root="$1" folder
    for folder in /var/tmp /tmp /dev/pts /dev /sys /proc; do
        if mountpoint -q "$root$folder" 2>/dev/null; then
            umount "$root$folder" 2>/dev/null || umount -l "$root$folder"
        fi
    done
}

# Removing a root must never reach this machine's folders mounted in it.
remove_root() {
    local root="$1"
    [ -e "$root" ] || return 0
    unmount_root "$root"
    if awk -v root="$root/" 'index($2 "/", root) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        die "$root still has mounts: not removing it"
    fi
    rm -rf --one-file-system "$root"
}

# The Debian root of the release with Slurm, MariaDB, munge and sshd, built once: a root whose stamp
# matches is reused as it is. Packages' services are never started (policy-rc.d); this script starts them.
ensure_rootfs() {
    [ -n "$ROOTFS" ] || return 0
    if [ -f "$ROOTFS_STAMP" ] && [ "$(cat "$ROOTFS_STAMP")" = "$ROOTFS_WANT" ]; then
        return 0
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
    fi
    local partial="$BASE/root.partial" began=$SECONDS
    remove_root "$partial"
    log "building a Debian $SUITE root in $ROOTFS (debootstrap from $MIRROR)"
    mkdir -p "$BASE"
    debootstrap --variant=minbase "$SUITE" "$partial" "$MIRROR" "/usr/share/debootstrap/scripts/$SUITE_SCRIPT" \
        >"$BASE/debootstrap.log" 2>&1 || die "debootstrap failed (log: $BASE/debootstrap.log)"
    printf '#!/bin/sh\nexit 101\n' >"$partial/usr/sbin/policy-rc.d"
    chmod 0755 "$partial/usr/sbin/policy-rc.d"
    cp /etc/hosts "$partial/etc/hosts"
    cp -L /etc/resolv.conf "$partial/etc/resolv.conf" 2>/dev/null || true
    mount -t proc proc "$partial/proc"
    # debootstrap leaves the package lists it has just checked: no `apt-get update`, which would
    # refuse a mirror whose Release file is past its Valid-Until date.
    if ! chroot "$partial" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${ROOTFS_PACKAGES[@]}" >>"$BASE/debootstrap.log" 2>&1; then
        umount "$partial/proc"
        die "installing Slurm in the $SUITE root failed (log: $BASE/debootstrap.log)"
    fi
    chroot "$partial" apt-get clean
    umount "$partial/proc"
    [ ! -d "$ROOTFS" ] || stop_daemons
    remove_root "$ROOTFS"
    mv "$partial" "$ROOTFS"
    echo "$ROOTFS_WANT" >"$ROOTFS_STAMP"
    log "$SUITE root ready in $((SECONDS - began)) s: Slurm $(slurm_version)"
}

# ---------------------------------------------------------------------------------------- config
write_slurm_config() {
    local host changed=1
    host="$(hostname -s)"
    mkdir -p "$ROOTFS/etc/slurm"
    install_if_changed "$ROOTFS$SLURM_CONF_FILE" 0644 <<EOF && changed=0
# Single-node cluster of grid-supervisor's tests and local grid (written by scripts/cluster.sh).
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$VIEW_BASE/state
SlurmdSpoolDir=$VIEW_BASE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
GresTypes=gpu
DefMemPerCPU=100
# Accounting: slurmdbd with MariaDB is the record of finished jobs.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Fast turnover for tests: finished jobs leave the controller quickly, time limits bite without grace.
MinJobAge=5
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MaxJobCount=20000
# Supervisors listed in grid-wakeup.targets hear at once when a job is allocated or ends.
PrologSlurmctld=$ETC/grid-wakeup.sh
EpilogSlurmctld=$ETC/grid-wakeup.sh
NodeName=$NODE_NAME NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
    install_if_changed "$ROOTFS$ETC/grid-wakeup.sh" 0755 <"$(dirname "${BASH_SOURCE[0]}")/slurmctld-wakeup.sh" || true
    [ -e "$ROOTFS$ETC/grid-wakeup.targets" ] || install -m 0644 /dev/null "$ROOTFS$ETC/grid-wakeup.targets"
    # Declared GPUs: Slurm's gpu plugin wants character devices, so each one is a copy of /dev/null.
    # Jobs are allocated and accounted GPUs; nothing runs on them.
    mkdir -p "$ROOTFS$VIEW_BASE/dev"
    local i
    for ((i = 0; i < GPUS; i++)); do
        [ -c "$ROOTFS$VIEW_BASE/dev/gpu$i" ] || { rm -f "$ROOTFS$VIEW_BASE/dev/gpu$i"; mknod -m 0666 "$ROOTFS$VIEW_BASE/dev/gpu$i" c 1 3; }
    done
    install_if_changed "$ROOTFS$ETC/gres.conf" 0644 <<EOF && changed=0
Name=gpu File=$VIEW_BASE/dev/gpu[0-$((GPUS - 1))]
EOF
    if [ -n "$ROOTFS" ]; then
        # From Slurm 23.11 slurmd sets up a cgroup plugin unless told not to; cgroups do not work here.
        install_if_changed "$ROOTFS$ETC/cgroup.conf" 0644 <<EOF && changed=0
CgroupPlugin=disabled
EOF
        ln -sfn "$ETC/cgroup.conf" "$ROOTFS/etc/slurm/cgroup.conf"
    fi
    install_if_changed "$ROOTFS$ETC/slurmdbd.conf" 0600 <<EOF || true
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ROOTFS$ETC/db.secret")
StorageLoc=slurm_acct_db
EOF
    # Client commands (also those run over SSH) read /etc/slurm/slurm.conf.
    if [ -e "$ROOTFS/etc/slurm/slurm.conf" ] && [ ! -L "$ROOTFS/etc/slurm/slurm.conf" ]; then
        log "$ROOTFS/etc/slurm/slurm.conf is a site file: leaving it; client commands need SLURM_CONF=$SLURM_CONF_FILE"
    else
        ln -sfn "$SLURM_CONF_FILE" "$ROOTFS/etc/slurm/slurm.conf"
        ln -sfn "$ETC/gres.conf" "$ROOTFS/etc/slurm/gres.conf"
    fi
    return $changed
}

# ---------------------------------------------------------------------------------------- daemons
start_munge() {
    munge_up && return 0
    [ -s "$ROOTFS/etc/munge/munge.key" ] || {
        run_in mungekey --create --keyfile=/etc/munge/munge.key && run_in chown munge:munge /etc/munge/munge.key
    }
    mkdir -p "$ROOTFS/run/munge" "$ROOTFS/var/lib/munge" "$ROOTFS/var/log/munge"
    run_in chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 "$ROOTFS/run/munge"
    run_in runuser -u munge -- /usr/sbin/munged --force 9>&-
    wait_for 10 munged munge_up
}

start_db() {
    db_up && return 0
    mkdir -p "$ROOTFS$DB_DIR"
    run_in chown mysql:mysql "$DB_DIR"
    if [ ! -d "$ROOTFS$DB_DIR/data/mysql" ]; then
        log "initialising MariaDB in $ROOTFS$DB_DIR/data"
        run_in mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$ROOTFS$LOG/mariadb-install.log" 2>&1
    fi
    local extra=()
    # MariaDB 11.8 (Debian 13 and later) turns on snapshot isolation, which slurmdbd does not support.
    [ -z "$ROOTFS" ] || extra=(--innodb-snapshot-isolation=OFF)
    run_in setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DB_DIR/mariadb.pid" \
        --log-error="$DB_DIR/mariadb.log" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
        "${extra[@]}" </dev/null >/dev/null 2>&1 9>&- &
    wait_for 60 "MariaDB (log: $ROOTFS$DB_DIR/mariadb.log)" db_up
    local secret
    secret="$(cat "$ROOTFS$ETC/db.secret")"
    run_in mariadb --no-defaults -S "$DB_SOCKET" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$secret';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$secret';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

# slurmdbd of Slurm 24.11 and 26.05 fails every query through the MariaDB client library of Debian 13
# and later (libmariadb3 11.8.9: "mysql_query failed: 5027 Number of columns in result (=1) set
# execeeds maxmimum allowed number of columns (=0)", then fatal). The client library of Debian 12
# (MariaDB Connector/C 3.3, ABI-compatible) works, so their slurmdbd loads that one.
DBD_LIBRARY_DIR=/usr/local/lib/grid-libmariadb
start_dbd() {
    dbd_up && return 0
    if [ -n "$ROOTFS" ]; then
        mkdir -p "$ROOTFS$DBD_LIBRARY_DIR"
        cmp -s /usr/lib/x86_64-linux-gnu/libmariadb.so.3 "$ROOTFS$DBD_LIBRARY_DIR/libmariadb.so.3" \
            || install -m 0644 /usr/lib/x86_64-linux-gnu/libmariadb.so.3 "$ROOTFS$DBD_LIBRARY_DIR/libmariadb.so.3"
        run_in env LD_LIBRARY_PATH="$DBD_LIBRARY_DIR" /usr/sbin/slurmdbd 9>&-
    else
        /usr/sbin/slurmdbd 9>&-
    fi
    wait_for 60 slurmdbd dbd_up
}

start_ctld() {
    ctld_up && return 0
    run_in /usr/sbin/slurmctld 9>&-
    wait_for 60 slurmctld ctld_up
}

start_slurmd() {
    if ! pid_alive "$RUN/slurmd.pid"; then
        run_in /usr/sbin/slurmd -N "$NODE_NAME" 9>&-
    fi
    # A node marked down by an earlier outage comes back here.
    if run_in sinfo -h -n "$NODE_NAME" -o '%T' 2>/dev/null | grep -qE 'down|drain|inval'; then
        run_in scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
    fi
    wait_for 60 slurmd slurmd_up
}

setup_accounting() {
    accounting_ready && return 0
    run_in sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || true
    run_in sacctmgr -i add account grid Cluster="$CLUSTER_NAME" Description=grid Organization=grid >/dev/null 2>&1 || true
    run_in sacctmgr -i add user "$ADMIN_USER" DefaultAccount=grid AdminLevel=Operator >/dev/null 2>&1 || true
    run_in sacctmgr -i modify user "$ADMIN_USER" set AdminLevel=Operator >/dev/null 2>&1 || true
    wait_for 30 "the Slurm operator $ADMIN_USER" accounting_ready
}

create_users() {
    local user uid gid
    for user in "$SERVICE_USER" "$ADMIN_USER" "${WALLET_USERS[@]}"; do
        if ! id -u "$user" >/dev/null 2>&1; then
            useradd -m -s /bin/bash "$user"
        fi
        # useradd leaves the account locked, and sshd refuses locked accounts even for keys.
        usermod -p '*' "$user"
        [ -n "$ROOTFS" ] || continue
        # The same user with the same ids in the root: files in the shared folders keep their owner.
        uid="$(id -u "$user")"
        gid="$(id -g "$user")"
        run_in getent group "$user" >/dev/null || run_in groupadd -g "$gid" "$user"
        run_in id -u "$user" >/dev/null 2>&1 || run_in useradd -m -u "$uid" -g "$gid" -s /bin/bash "$user"
        run_in usermod -p '*' "$user"
    done
}

write_ssh_config() {
    mkdir -p "$ROOTFS$SSH_DIR/authorized_keys" "$ROOTFS/run/sshd"
    chmod 0755 "$ROOTFS$SSH_DIR" "$ROOTFS$SSH_DIR/authorized_keys"
    [ -f "$ROOTFS$SSH_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$ROOTFS$SSH_DIR/ssh_host_ed25519_key"
    [ -f "$ROOTFS$SSH_DIR/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C grid-supervisor -f "$ROOTFS$SSH_DIR/client_ed25519"
    local user
    for user in "$SERVICE_USER" "$ADMIN_USER" "${WALLET_USERS[@]}"; do
        install -m 0644 "$ROOTFS$SSH_DIR/client_ed25519.pub" "$ROOTFS$SSH_DIR/authorized_keys/$user"
    done
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$ROOTFS$SSH_DIR/ssh_host_ed25519_key.pub")" \
        >"$ROOTFS$SSH_DIR/known_hosts"
    install_if_changed "$ROOTFS$SSH_DIR/sshd_config" 0644 <<EOF || true
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile $SSH_DIR/authorized_keys/%u
PermitRootLogin no
MaxSessions 64
MaxStartups 64:30:128
LogLevel ERROR
Subsystem sftp internal-sftp
EOF
}

start_sshd() {
    sshd_up && return 0
    run_in /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$LOG/sshd.log" 9>&-
    wait_for 20 sshd sshd_up
}

# The upstream version of the release's Slurm (Debian's version without its revision).
slurm_version() {
    local version
    # shellcheck disable=SC2016 # dpkg-query's own field syntax
    version="$(run_in dpkg-query -W -f='${Version}' slurm-client 2>/dev/null)"
    version="${version#*:}"
    printf '%s' "${version%%-*}"
}

write_info() {
    local version prefix=""
    version="$(slurm_version)"
    [ -z "$ROOTFS" ] || prefix="\"$(command -v chroot)\", \"$ROOTFS\""
    install_if_changed "$BASE/cluster.json" 0644 <<EOF || true
{
  "release": "$RELEASE",
  "slurm_version": "$version",
  "command_prefix": [$prefix],
  "root_dir": "${ROOTFS:-/}",
  "base_dir": "$BASE",
  "slurm_conf": "$ROOTFS$SLURM_CONF_FILE",
  "wakeup_targets": "$ROOTFS$ETC/grid-wakeup.targets",
  "cluster_name": "$CLUSTER_NAME",
  "partition": "$PARTITION",
  "node_name": "$NODE_NAME",
  "cpus_per_node": $CPUS,
  "memory_mb_per_node": $MEMORY_MB,
  "gpus_per_node": $GPUS,
  "slurmctld_port": $CTLD_PORT,
  "ssh_host": "127.0.0.1",
  "ssh_port": $SSH_PORT,
  "ssh_known_hosts": "$ROOTFS$SSH_DIR/known_hosts",
  "ssh_client_key": "$ROOTFS$SSH_DIR/client_ed25519",
  "service_user": "$SERVICE_USER",
  "admin_user": "$ADMIN_USER",
  "wallet_users": ["${WALLET_USERS[0]}", "${WALLET_USERS[1]}"]
}
EOF
}

stop_pidfile() {
    local pidfile="$1" name="$2" pid
    pid_alive "$pidfile" || return 0
    pid="$(cat "$ROOTFS$pidfile")"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { log "$name ($pid) ignores SIGTERM, killing it"; kill -9 "$pid" 2>/dev/null || true; }
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------- commands
lock() {
    mkdir -p "$BASE"
    exec 9>"$BASE/cluster.lock"
    flock 9
}

# A rehearsed outage (stop-ctld) leaves a marker: `up` from another process waits for start-ctld
# rather than ending the outage early. A marker older than OUTAGE_MAX_S is ignored.
OUTAGE_MARKER="$BASE/ctld-outage"
OUTAGE_MAX_S=300
wait_for_rehearsed_outage() {
    local age
    while [ -f "$OUTAGE_MARKER" ]; do
        age=$(($(date +%s) - $(stat -c %Y "$OUTAGE_MARKER")))
        [ "$age" -lt "$OUTAGE_MAX_S" ] || { rm -f "$OUTAGE_MARKER"; break; }
        sleep 0.5
    done
}

cmd_up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it starts system daemons and creates users)"
    wait_for_rehearsed_outage
    lock
    local config_changed=1
    if [ -f "$BASE/cluster.json" ] && all_up; then
        # Running already: nothing to do unless this script's configuration changed since.
        write_slurm_config && config_changed=0
        if [ $config_changed -ne 0 ]; then
            write_info
            return 0
        fi
        log "the configuration changed: restarting the Slurm daemons"
    fi
    ensure_rootfs
    [ -z "$ROOTFS" ] || mount_root
    mkdir -p "$ROOTFS$ETC" "$ROOTFS$RUN" "$ROOTFS$LOG" "$ROOTFS$VIEW_BASE/state" "$ROOTFS$VIEW_BASE/spool"
    chmod 0755 "$BASE" "$ROOTFS$VIEW_BASE"
    [ -s "$ROOTFS$ETC/db.secret" ] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$ROOTFS$ETC/db.secret")
    create_users
    write_slurm_config && config_changed=0
    write_ssh_config
    if [ $config_changed -eq 0 ]; then
        # New settings take effect on a fresh start of the Slurm daemons (jobs survive in the state).
        stop_pidfile "$RUN/slurmd.pid" slurmd
        stop_pidfile "$RUN/slurmctld.pid" slurmctld
        stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    fi
    start_munge
    start_db
    start_dbd
    start_ctld
    start_slurmd
    setup_accounting
    start_sshd
    write_info
    log "up: Slurm $(slurm_version), partition $PARTITION on $NODE_NAME, slurmctld :$CTLD_PORT, sshd 127.0.0.1:$SSH_PORT, details in $BASE/cluster.json"
}

# Every daemon this script started; a root's munged serves only its cluster and stops too, while this
# machine's munged is shared with any other Slurm client on the machine and stays up.
stop_daemons() {
    stop_pidfile "$RUN/sshd.pid" sshd
    stop_pidfile "$RUN/slurmd.pid" slurmd
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    stop_pidfile "$DB_DIR/mariadb.pid" MariaDB
    [ -z "$ROOTFS" ] || stop_pidfile /run/munge/munged.pid munged
}

cmd_down() {
    lock
    stop_daemons
    rm -f "$BASE/cluster.json"
    # The root stays built for the next `up`.
    [ -z "$ROOTFS" ] || unmount_root "$ROOTFS"
    log "down"
}

cmd_status() {
    local failed=0 name check
    for name in mounts munged mariadb slurmdbd slurmctld slurmd sshd accounting; do
        case "$name" in
            mounts) [ -n "$ROOTFS" ] || continue; check=mounts_ready ;;
            munged) check=munge_up ;; mariadb) check=db_up ;; slurmdbd) check=dbd_up ;;
            slurmctld) check=ctld_up ;; slurmd) check=slurmd_up ;; sshd) check=sshd_up ;;
            accounting) check=accounting_ready ;;
        esac
        if $check; then echo "$name up"; else echo "$name down"; failed=1; fi
    done
    return $failed
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    info) cat "$BASE/cluster.json" ;;
    stop-ctld) lock && touch "$OUTAGE_MARKER" && stop_pidfile "$RUN/slurmctld.pid" slurmctld ;;
    start-ctld) lock && start_ctld && rm -f "$OUTAGE_MARKER" ;;
    *) echo "usage: $0 [--release bookworm|trixie|forky] up|down|status|info|stop-ctld|start-ctld" >&2; exit 2 ;;
esac
