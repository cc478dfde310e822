#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine, idempotently:
# Debian packages (Slurm with accounting, MariaDB, munge, sshd, shellcheck), a Python virtual
# environment with the package, and from npm: anvil, solcjs with its py-solc-x shim, and
# OpenZeppelin contracts. A second run finds everything in place and returns within a second or two.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"

ANVIL_VERSION="1.7.1"
SOLC_VERSION="0.8.26"
OPENZEPPELIN_VERSION="4.9.6"
APT_PACKAGES=(slurm-wlm slurm-client slurmdbd munge libslurm-dev mariadb-server openssh-server shellcheck systemd debootstrap
    # What the sbatch service's batch scripts call on the nodes: data in and out (awscli stands in for
    # s5cmd, not in Debian), archives, namespaces and user-mode networking, WireGuard (wireguard-go
    # where the kernel has no module), netcat for the network tests, git for modules.
    awscli curl wget zip unzip file bzip2 xz-utils p7zip-full iproute2 slirp4netns passt wireguard-tools
    wireguard-go netcat-openbsd git
    # The compiler of the libslurm binding (grid-supervisor build-libslurm).
    gcc libc6-dev)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

install_debian_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages (${missing[*]}) and not root: install them with apt-get"
        return 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_npm_tools() {
    mkdir -p "$TOOLS/bin" "$TOOLS/npm"
    local stamp="$TOOLS/npm/.versions"
    local want="anvil=$ANVIL_VERSION solc=$SOLC_VERSION oz=$OPENZEPPELIN_VERSION shim=3"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$TOOLS/bin/anvil" ] && [ -x "$TOOLS/bin/solc" ]; then
        return 0
    fi
    log "installing anvil $ANVIL_VERSION, solcjs $SOLC_VERSION, OpenZeppelin $OPENZEPPELIN_VERSION from npm"
    (
        cd "$TOOLS/npm"
        [ -f package.json ] || echo '{"name":"grid-supervisor-tools","private":true}' > package.json
        npm install --silent --no-audit --no-fund --save-exact \
            "solc@$SOLC_VERSION" "@openzeppelin/contracts@$OPENZEPPELIN_VERSION" >/dev/null
        rm -rf anvil-pack && mkdir anvil-pack && cd anvil-pack
        npm pack --silent "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION" >/dev/null
        tar xzf ./*.tgz
    )
    install -m 0755 "$TOOLS/npm/anvil-pack/package/bin/anvil" "$TOOLS/bin/anvil"
    write_solc_shim
    echo "$want" > "$stamp"
}

# py-solc-x expects a native solc: answer --version in its format, drop the flags solcjs lacks and
# strip the notice solcjs prints before its JSON.
# The stamp names the shim revision so that a changed shim is rewritten.
write_solc_shim() {
    local solcjs="$TOOLS/npm/node_modules/solc/solc.js"
    local full
    full="$(node "$solcjs" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*+commit\.[0-9a-f]*')"
    cat > "$TOOLS/bin/solc" <<SHIM
#!/usr/bin/env bash
set -euo pipefail
if [ "\${1:-}" = "--version" ]; then
    echo "solc, the solidity compiler commandline interface"
    echo "Version: $full.Linux.g++"
    exit 0
fi
args=()
skip=0
for arg in "\$@"; do
    if [ \$skip -eq 1 ]; then skip=0; continue; fi
    case "\$arg" in
        --allow-paths) skip=1 ;;
        --allow-paths=*) ;;
        *) args+=("\$arg") ;;
    esac
done
# solcjs reads its standard input in one synchronous call, which fails on a pipe that is not ready yet,
# and exits before a pipe has taken all of a large output: both ends go through files.
input="\$(mktemp)"
output="\$(mktemp)"
trap 'rm -f "\$input" "\$output"' EXIT
cat > "\$input"
status=0
node "$solcjs" "\${args[@]}" < "\$input" > "\$output" || status=\$?
sed '/^>>> Cannot retry compilation/d' "\$output"
exit \$status
SHIM
    chmod 0755 "$TOOLS/bin/solc"
}

install_python_env() {
    local stamp="$VENV/.pyproject.sha256"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    log "creating the virtual environment in $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "${ROOT}[sbatch,contracts,logger,dev]"
    echo "$want" > "$stamp"
}

# The local backend's submissions without a process per job (slurm.submitter); sbatch without it.
build_libslurm_binding() {
    "$VENV/bin/grid-supervisor" build-libslurm >/dev/null \
        || log "warning: the libslurm binding was not built: jobs will be submitted with sbatch"
}

install_debian_packages
install_npm_tools
install_python_env
build_libslurm_binding
log "ready: $VENV, $TOOLS/bin/anvil, $TOOLS/bin/solc"
