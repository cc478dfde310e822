#!/usr/bin/env bash
# Install or upgrade grid-supervisor on a Slurm login node (Debian/Ubuntu/RHEL with systemd), as root.
#
#   bash scripts/install.sh                 install or upgrade from this checkout
#   bash scripts/install.sh --create-key    also create a new provider key (prints its address only)
#
# Each install goes to its own release folder under the prefix; the `venv` link then moves to it in
# one rename, and a running service is restarted: it drains its outbox on SIGTERM, Slurm jobs keep
# running, and the new version picks them up from the state file. The previous release stays for a
# rollback (`ln -sfn <old release> /opt/grid-supervisor/venv && systemctl restart grid-supervisor`).
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/grid-supervisor
CONFIG_DIR=/etc/grid-supervisor
UNIT_DIR=/etc/systemd/system
SERVICE_USER=grid-supervisor
PYTHON="${PYTHON:-python3}"
CREATE_KEY=0
KEEP_RELEASES=3

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

options: --prefix DIR ($PREFIX)  --config-dir DIR ($CONFIG_DIR)  --unit-dir DIR ($UNIT_DIR)
         --user NAME ($SERVICE_USER)  --python PATH ($PYTHON, 3.11 or newer)  --create-key
EOF
}

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --config-dir) CONFIG_DIR="$2"; shift 2 ;;
        --unit-dir) UNIT_DIR="$2"; shift 2 ;;
        --user) SERVICE_USER="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --create-key) CREATE_KEY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a system user and installs a systemd unit)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer, or pass --python"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1): Python 3.11 or newer is required"
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a grid-supervisor checkout"

# -- the service user: no login, no home beyond its state directory ------------------------------
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    log "creating the system user $SERVICE_USER"
    useradd --system --user-group --home-dir /var/lib/grid-supervisor --no-create-home \
        --shell /usr/sbin/nologin --comment "grid-supervisor daemon" "$SERVICE_USER"
fi

# -- the release ---------------------------------------------------------------------------------
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$SOURCE/pyproject.toml" | head -n 1)"
release="$PREFIX/releases/$version-$(date -u +%Y%m%dT%H%M%SZ)"
log "installing grid-supervisor $version into $release"
mkdir -p "$PREFIX/releases"
# The release holds a copy of the source (the daemon reads the contracts' ABIs from its abi/ folder)
# and a virtual environment with the package installed from that copy.
mkdir -p "$release/src"
tar -C "$SOURCE" --exclude=./.venv --exclude=./.tools --exclude=./.git --exclude=./var \
    --exclude='__pycache__' -cf - . | tar -C "$release/src" -xf -
"$PYTHON" -m venv "$release"
"$release/bin/pip" install --quiet --upgrade pip
"$release/bin/pip" install --quiet --editable "$release/src"
"$release/bin/grid-supervisor" --help >/dev/null || die "the new release does not run; the old one stays in place"
install -m 0644 "$SOURCE/README.md" "$PREFIX/README.md"
ln -sfn "$release" "$PREFIX/venv.new"
mv -T "$PREFIX/venv.new" "$PREFIX/venv"    # one rename: the link is never missing
# Keep the newest releases for a rollback.
find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d | sort | head -n "-$KEEP_RELEASES" | while read -r old; do
    [ "$(readlink -f "$PREFIX/venv")" = "$old" ] || rm -rf -- "$old"
done

# -- configuration: root owns it, the service reads it --------------------------------------------
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/supervisor.toml" ]; then
    log "writing an example configuration to $CONFIG_DIR/supervisor.toml: edit it before starting"
    install -m 0640 -o root -g "$SERVICE_USER" "$SOURCE/systemd/supervisor.example.toml" "$CONFIG_DIR/supervisor.toml"
fi

# -- the provider key: root-only file, handed to the service as a systemd credential -------------
if [ "$CREATE_KEY" -eq 1 ]; then
    key="$CONFIG_DIR/provider.key"
    [ ! -e "$key" ] || die "$key exists: refusing to replace a provider key"
    (umask 077 && "$PREFIX/venv/bin/python" - "$key" <<'EOF'
import sys
from pathlib import Path

from eth_account import Account

account = Account.create()
Path(sys.argv[1]).write_text(account.key.hex() + "\n")
print(f"provider key written to {sys.argv[1]} (mode 0600); address {account.address}")
print("back it up offline, then send gas money to the address")
EOF
    )
fi

# -- the unit ------------------------------------------------------------------------------------
install -d "$UNIT_DIR"
sed -e "s#/opt/grid-supervisor#$PREFIX#g" -e "s#/etc/grid-supervisor#$CONFIG_DIR#g" \
    -e "s#^User=grid-supervisor#User=$SERVICE_USER#" -e "s#^Group=grid-supervisor#Group=$SERVICE_USER#" \
    "$SOURCE/systemd/grid-supervisor.service" >"$UNIT_DIR/grid-supervisor.service.new"
chmod 0644 "$UNIT_DIR/grid-supervisor.service.new"
mv -T "$UNIT_DIR/grid-supervisor.service.new" "$UNIT_DIR/grid-supervisor.service"

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet grid-supervisor; then
        log "restarting the running service (it drains, then the new release reconciles its jobs)"
        systemctl restart grid-supervisor
    else
        log "installed; check with: $PREFIX/venv/bin/grid-supervisor doctor --config $CONFIG_DIR/supervisor.toml"
        log "then: systemctl enable --now grid-supervisor"
    fi
else
    log "systemd is not running here: the unit is installed but not loaded"
fi
