#!/usr/bin/env bash
# A real single-node Slurm cluster with accounting on this machine, plus an sshd on loopback acting
# as its login node: munged, MariaDB, slurmdbd, slurmctld, slurmd and sshd, started directly (no
# systemd), with every file under one scratch folder.
#
#   scripts/cluster.sh up          start whatever is not running (fast when everything is up)
#   scripts/cluster.sh down        stop everything this script started
#   scripts/cluster.sh status      one line per component; exit status 0 only when all are up
#   scripts/cluster.sh info        the connection details as JSON (written by `up`)
#   scripts/cluster.sh stop-ctld   stop slurmctld alone (to rehearse an outage)
#   scripts/cluster.sh start-ctld  start slurmctld again; its jobs survive in StateSaveLocation
#
# Settings (environment): GRID_CLUSTER_DIR (default /var/lib/grid-cluster), GRID_CLUSTER_PORT_BASE
# (default 16800: slurmctld +17, slurmd +18, slurmdbd +19, MariaDB +6, sshd +22), GRID_CLUSTER_CPUS
# (default 8), GRID_CLUSTER_MEMORY_MB (default 8000), GRID_CLUSTER_GPUS (default 2). The node's CPUs,
# memory and GPUs are declared (SlurmdParameters=config_overrides), so jobs may share the real cores.
# Client commands find the configuration through /etc/slurm/slurm.conf, a link to the scratch copy.
set -euo pipefail

BASE="${GRID_CLUSTER_DIR:-/var/lib/grid-cluster}"
PORT_BASE="${GRID_CLUSTER_PORT_BASE:-16800}"
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

ETC="$BASE/etc"
RUN="$BASE/run"
LOG="$BASE/log"
SSH_DIR="$BASE/ssh"
DB_DIR="$BASE/mysql"
DB_SOCKET="$DB_DIR/mysqld.sock"
SLURM_CONF_FILE="$ETC/slurm.conf"
export SLURM_CONF="$SLURM_CONF_FILE"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait until "$@" succeeds, up to $timeout seconds, polling every 0.2 s.
wait_for() {
    local timeout="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up within ${timeout}s (logs in $LOG)"
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
    install -m "$mode" "$tmp" "$target"
    rm -f "$tmp"
    return 0
}

# ---------------------------------------------------------------------------------------- checks
munge_up() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_up() { [ -S "$DB_SOCKET" ] && mariadb-admin --no-defaults -S "$DB_SOCKET" -u root ping >/dev/null 2>&1; }
dbd_up() { pid_alive "$RUN/slurmdbd.pid" && (exec 3<>"/dev/tcp/127.0.0.1/$DBD_PORT") 2>/dev/null; }
ctld_up() { pid_alive "$RUN/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q 'is UP'; }
slurmd_up() {
    pid_alive "$RUN/slurmd.pid" || return 1
    local state
    state="$(sinfo -h -n "$NODE_NAME" -o '%T' 2>/dev/null)" || return 1
    case "$state" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}
sshd_up() { pid_alive "$RUN/sshd.pid" && (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null; }
accounting_ready() { sacctmgr -n -P show user "$ADMIN_USER" format=adminlevel 2>/dev/null | grep -qi operator; }

all_up() { munge_up && db_up && dbd_up && ctld_up && slurmd_up && sshd_up && accounting_ready; }

# ---------------------------------------------------------------------------------------- config
write_slurm_config() {
    local host changed=1
    host="$(hostname -s)"
    install_if_changed "$SLURM_CONF_FILE" 0644 <<EOF && changed=0
# Single-node cluster of grid-supervisor's tests and local grid (written by scripts/cluster.sh).
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
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
NodeName=$NODE_NAME NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
    # Declared GPUs: Slurm's gpu plugin wants character devices, so each one is a copy of /dev/null.
    # Jobs are allocated and accounted GPUs; nothing runs on them.
    mkdir -p "$BASE/dev"
    local i
    for ((i = 0; i < GPUS; i++)); do
        [ -c "$BASE/dev/gpu$i" ] || { rm -f "$BASE/dev/gpu$i"; mknod -m 0666 "$BASE/dev/gpu$i" c 1 3; }
    done
    install_if_changed "$ETC/gres.conf" 0644 <<EOF && changed=0
Name=gpu File=$BASE/dev/gpu[0-$((GPUS - 1))]
EOF
    install_if_changed "$ETC/slurmdbd.conf" 0600 <<EOF || true
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
StoragePass=$(cat "$ETC/db.secret")
StorageLoc=slurm_acct_db
EOF
    # Client commands (also those run over SSH) read /etc/slurm/slurm.conf.
    mkdir -p /etc/slurm
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        log "/etc/slurm/slurm.conf is a site file: leaving it; client commands need SLURM_CONF=$SLURM_CONF_FILE"
    else
        ln -sfn "$SLURM_CONF_FILE" /etc/slurm/slurm.conf
        ln -sfn "$ETC/gres.conf" /etc/slurm/gres.conf
    fi
    return $changed
}

# ---------------------------------------------------------------------------------------- daemons
start_munge() {
    munge_up && return 0
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force 9>&-
    wait_for 10 munged munge_up
}

start_db() {
    db_up && return 0
    mkdir -p "$DB_DIR"
    chown mysql:mysql "$DB_DIR"
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        log "initialising MariaDB in $DB_DIR/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1
    fi
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DB_DIR/mariadb.pid" \
        --log-error="$DB_DIR/mariadb.log" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 9>&- &
    wait_for 60 "MariaDB (log: $DB_DIR/mariadb.log)" db_up
    local secret
    secret="$(cat "$ETC/db.secret")"
    mariadb --no-defaults -S "$DB_SOCKET" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$secret';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$secret';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_dbd() {
    dbd_up && return 0
    /usr/sbin/slurmdbd 9>&-
    wait_for 60 slurmdbd dbd_up
}

start_ctld() {
    ctld_up && return 0
    /usr/sbin/slurmctld 9>&-
    wait_for 60 slurmctld ctld_up
}

start_slurmd() {
    if ! pid_alive "$RUN/slurmd.pid"; then
        /usr/sbin/slurmd -N "$NODE_NAME" 9>&-
    fi
    # A node marked down by an earlier outage comes back here.
    if sinfo -h -n "$NODE_NAME" -o '%T' 2>/dev/null | grep -qE 'down|drain|inval'; then
        scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
    fi
    wait_for 60 slurmd slurmd_up
}

setup_accounting() {
    accounting_ready && return 0
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || true
    sacctmgr -i add account grid Cluster="$CLUSTER_NAME" Description=grid Organization=grid >/dev/null 2>&1 || true
    sacctmgr -i add user "$ADMIN_USER" DefaultAccount=grid AdminLevel=Operator >/dev/null 2>&1 || true
    sacctmgr -i modify user "$ADMIN_USER" set AdminLevel=Operator >/dev/null 2>&1 || true
    wait_for 30 "the Slurm operator $ADMIN_USER" accounting_ready
}

create_users() {
    local user
    for user in "$SERVICE_USER" "$ADMIN_USER" "${WALLET_USERS[@]}"; do
        if ! id -u "$user" >/dev/null 2>&1; then
            useradd -m -s /bin/bash "$user"
        fi
        # useradd leaves the account locked, and sshd refuses locked accounts even for keys.
        usermod -p '*' "$user"
    done
}

write_ssh_config() {
    mkdir -p "$SSH_DIR/authorized_keys" /run/sshd
    chmod 0755 "$SSH_DIR" "$SSH_DIR/authorized_keys"
    [ -f "$SSH_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/ssh_host_ed25519_key"
    [ -f "$SSH_DIR/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C grid-supervisor -f "$SSH_DIR/client_ed25519"
    local user
    for user in "$SERVICE_USER" "$ADMIN_USER" "${WALLET_USERS[@]}"; do
        install -m 0644 "$SSH_DIR/client_ed25519.pub" "$SSH_DIR/authorized_keys/$user"
    done
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" \
        >"$SSH_DIR/known_hosts"
    install_if_changed "$SSH_DIR/sshd_config" 0644 <<EOF || true
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
    /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$LOG/sshd.log" 9>&-
    wait_for 20 sshd sshd_up
}

write_info() {
    cat >"$BASE/cluster.json" <<EOF
{
  "base_dir": "$BASE",
  "slurm_conf": "$SLURM_CONF_FILE",
  "cluster_name": "$CLUSTER_NAME",
  "partition": "$PARTITION",
  "node_name": "$NODE_NAME",
  "cpus_per_node": $CPUS,
  "memory_mb_per_node": $MEMORY_MB,
  "gpus_per_node": $GPUS,
  "slurmctld_port": $CTLD_PORT,
  "ssh_host": "127.0.0.1",
  "ssh_port": $SSH_PORT,
  "ssh_known_hosts": "$SSH_DIR/known_hosts",
  "ssh_client_key": "$SSH_DIR/client_ed25519",
  "service_user": "$SERVICE_USER",
  "admin_user": "$ADMIN_USER",
  "wallet_users": ["${WALLET_USERS[0]}", "${WALLET_USERS[1]}"]
}
EOF
}

stop_pidfile() {
    local pidfile="$1" name="$2" pid
    pid_alive "$pidfile" || return 0
    pid="$(cat "$pidfile")"
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
    if [ -f "$BASE/cluster.json" ] && all_up; then
        return 0
    fi
    mkdir -p "$ETC" "$RUN" "$LOG" "$BASE/state" "$BASE/spool"
    chmod 0755 "$BASE"
    [ -s "$ETC/db.secret" ] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.secret")
    create_users
    local config_changed=1
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
    log "up: partition $PARTITION on $NODE_NAME, slurmctld :$CTLD_PORT, sshd 127.0.0.1:$SSH_PORT, details in $BASE/cluster.json"
}

cmd_down() {
    lock
    stop_pidfile "$RUN/sshd.pid" sshd
    stop_pidfile "$RUN/slurmd.pid" slurmd
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    stop_pidfile "$DB_DIR/mariadb.pid" MariaDB
    # munged is shared with any other Slurm client on the machine: it stays up.
    rm -f "$BASE/cluster.json"
    log "down"
}

cmd_status() {
    local failed=0 name check
    for name in munged mariadb slurmdbd slurmctld slurmd sshd accounting; do
        case "$name" in
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
    *) echo "usage: $0 up|down|status|info|stop-ctld|start-ctld" >&2; exit 2 ;;
esac
