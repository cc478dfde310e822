"""A `run` step as srun and its task: on the host, in Enroot, in Apptainer, with its network and ids.

Everything a task needs beyond its command (the Enroot configuration and its rc.local hook, WireGuard
configurations, a bore secret, a resolv.conf) is written by the batch script into a private folder
of the step's execution, `$GRID_STEP_DIR`, with the printf builtin: values reach files, never the
arguments of a process. Step variables reach the task through srun's environment (prefix
assignments and `--export=ALL`), also never through arguments.
"""

from __future__ import annotations

import ipaddress
import posixpath
import shlex
from dataclasses import dataclass

from sbatch_service.models import Bore, Container, Job, Network, StepRun, VNet, Wireguard
from sbatch_service.script import ScriptBuilder, printf_file, quote

CONTAINER_ROOT = "/deepsquare"
# The nine variables as containers see them (DEEPSQUARE_ENV keeps the name of the host file).
CONTAINER_VALUES = (
    ("STORAGE_PATH", CONTAINER_ROOT),
    ("DEEPSQUARE_TMP", f"{CONTAINER_ROOT}/tmp"),
    ("DEEPSQUARE_SHARED_TMP", f"{CONTAINER_ROOT}/tmp"),
    ("DEEPSQUARE_SHARED_WORLD_TMP", f"{CONTAINER_ROOT}/world-tmp"),
    ("DEEPSQUARE_DISK_TMP", f"{CONTAINER_ROOT}/disk/tmp"),
    ("DEEPSQUARE_DISK_WORLD_TMP", f"{CONTAINER_ROOT}/disk/world-tmp"),
    ("DEEPSQUARE_INPUT", f"{CONTAINER_ROOT}/input"),
    ("DEEPSQUARE_OUTPUT", f"{CONTAINER_ROOT}/output"),
)
CONTAINER_ENV_FILE = f'"{CONTAINER_ROOT}/$(basename "$DEEPSQUARE_ENV")"'
# The five read-write mounts of every container: host variable, container path.
CACHE_MOUNTS = (
    ("STORAGE_PATH", CONTAINER_ROOT),
    ("DEEPSQUARE_SHARED_TMP", f"{CONTAINER_ROOT}/tmp"),
    ("DEEPSQUARE_SHARED_WORLD_TMP", f"{CONTAINER_ROOT}/world-tmp"),
    ("DEEPSQUARE_DISK_TMP", f"{CONTAINER_ROOT}/disk/tmp"),
    ("DEEPSQUARE_DISK_WORLD_TMP", f"{CONTAINER_ROOT}/disk/world-tmp"),
)
X11 = "/tmp/.X11-unix"
CONTAINER_NAME = '"container-$SLURM_JOB_ID.$SLURM_STEP_ID.$SLURM_PROCID"'
STEP_DIR = '"$GRID_STEP_DIR"'
SYSTEM_PATH = 'PATH="$PATH:/usr/sbin:/sbin"'
NAMESPACE_TRIES = 40
# Userspace WireGuard (wireguard-go, where the kernel has no module) keeps its control sockets in
# /run/wireguard: a private tmpfs there, in the step's own mount namespace, keeps steps apart.
PRIVATE_WIREGUARD_SOCKETS = "mkdir -p /run/wireguard 2>/dev/null || true; mount -t tmpfs -o mode=0700 tmpfs /run/wireguard 2>/dev/null || true"


@dataclass(frozen=True)
class Image:
    """Where a step's image is on the nodes: a bash word (already quoted)."""

    path: str


def image_word(container: Container, fetched: dict[tuple[object, ...], Image], software_root: str) -> str:
    """The image as a bash word: a hosted one under `software_root`, a local file inside the job's
    folder, else the fetched copy. Both paths are cleaned, so neither can leave its root."""
    if container.deepsquare_hosted:
        parts = [part.strip("/") for part in (container.registry, container.image) if part]
        inside = posixpath.normpath("/" + "/".join(parts))
        if inside.startswith("/.."):
            raise ValueError(f"hosted image {container.image!r} leaves the software root")
        return quote(software_root.rstrip("/") + inside)
    if container.is_local_file:
        return f'"$STORAGE_PATH"{quote(container.local_path)}'
    return fetched[image_key(container)].path


def image_key(container: Container) -> tuple[object, ...]:
    return (
        container.uses_apptainer,
        container.registry,
        container.image,
        container.username,
        container.password,
    )


def image_url(container: Container) -> str:
    """`docker://[registry#]image` for Enroot, `docker://[registry/]image` for Apptainer."""
    name = container.image_name
    if not container.registry:
        return f"docker://{name}"
    separator = "/" if container.uses_apptainer else "#"
    return f"docker://{container.registry}{separator}{name}"


@dataclass(frozen=True)
class PeerIndex:
    """Where a vnet interface joins: the network's position and the peer's position in it."""

    network: int
    peer: int


def peers_of(job: Job, runs: list[StepRun]) -> dict[str, list[str]]:
    """Each virtual network's peers: the distinct IPs of its vnet interfaces, sorted as strings."""
    found: dict[str, set[str]] = {network.name: set() for network in job.virtual_networks}
    for run in runs:
        for nic in run.custom_network_interfaces:
            if nic.vnet is not None and nic.vnet.name in found:
                found[nic.vnet.name].add(nic.vnet.ip)
    return {name: sorted(ips) for name, ips in found.items()}


def _unshare(uid: int | None, gid: int | None, *extra: str) -> list[str]:
    words = ["unshare", "--map-current-user", *extra]
    if uid is not None:
        words.append(f"--map-user={uid}")
    if gid is not None:
        words.append(f"--map-group={gid}")
    return words


def id_prefix(run: StepRun) -> list[str]:
    """`unshare --map-current-user [--map-user=U] [--map-group=G] --mount` when ids are mapped."""
    if run.map_uid is None and run.map_gid is None:
        return []
    return [*_unshare(run.map_uid, run.map_gid), "--mount"]


def _wait_for(condition: str, what: str) -> str:
    return (
        "grid_tries=0\n"
        f"until {condition}; do\n"
        "  grid_tries=$((grid_tries + 1))\n"
        f'  if [ "$grid_tries" -ge {NAMESPACE_TRIES} ]; then echo {quote(what)} >&2; exit 1; fi\n'
        "  sleep 0.5\n"
        "done\n"
    )


def network_wrapper(run: StepRun, inner: str) -> str:
    """The POSIX sh script that runs `inner` in a new network namespace behind slirp4netns or pasta."""
    unshare = " ".join(_unshare(run.map_uid, run.map_gid, "--net", "--mount"))
    if run.network is Network.SLIRP4NETNS:
        helper = (
            "slirp4netns --configure --mtu=65520 --disable-host-loopback --cidr 169.254.254.0/24 "
            '"$grid_child" net0'
        )
    else:
        helper = (
            "pasta --config-net --tcp-ports none --udp-ports none "
            '--netns "/proc/$grid_child/ns/net" --userns "/proc/$grid_child/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f'
        )
    return (
        "set -e\n"
        f"{SYSTEM_PATH}\n"
        f"{unshare} /bin/sh -c {quote(inner)} &\n"
        "grid_child=$!\n"
        + _wait_for(
            '[ "$(readlink "/proc/$grid_child/ns/net")" != "$(readlink /proc/self/ns/net)" ]',
            "the step's network namespace did not start",
        )
        + f"{helper} &\n"
        "grid_helper=$!\n"
        # The child first gets TERM so that it can take its interfaces down; then the helper goes.
        'trap \'kill "$grid_child" 2>/dev/null || true; wait "$grid_child" 2>/dev/null || true; '
        'kill -9 "$grid_helper" 2>/dev/null || true\' EXIT\n'
        "trap 'exit 143' TERM\n"
        "trap 'exit 130' INT\n"
        'wait "$grid_child"\n'
    )


def inner_script(run: StepRun, command: str) -> str:
    """Inside the namespace: wait for net0, bring the custom interfaces up, apply dns, run `command`.

    WireGuard interfaces are taken down when the step ends, so that a userspace WireGuard daemon
    (which outlives the processes of its namespace) ends with the step.
    """
    lines = [
        "set -e",
        SYSTEM_PATH,
        _wait_for("ip link show net0 >/dev/null 2>&1", "net0 did not appear").rstrip(),
    ]
    tunnels = [
        f'"$GRID_STEP_DIR/{"wg" if isinstance(kind, Wireguard) else "vnet"}{index}.conf"'
        for index, kind in run.interfaces
        if isinstance(kind, Wireguard | VNet)
    ]
    if tunnels:
        lines.append(PRIVATE_WIREGUARD_SOCKETS)
        down = "; ".join(f"wg-quick down {conf} >/dev/null 2>&1 || true" for conf in reversed(tunnels))
        lines.append(f"trap '{down}' EXIT")
        lines.append("trap 'exit 143' TERM")
        lines.append("trap 'exit 130' INT")
    for index, kind in run.interfaces:
        if isinstance(kind, Wireguard):
            lines.append(f'wg-quick up "$GRID_STEP_DIR/wg{index}.conf"')
        elif isinstance(kind, VNet):
            lines.append(f'wg-quick up "$GRID_STEP_DIR/vnet{index}.conf"')
        else:
            lines.append(_bore(index, kind))
    if run.dns:
        lines.append('mount --bind "$GRID_STEP_DIR/resolv.conf" /etc/resolv.conf')
    lines.append(command)
    return "\n".join(lines) + "\n"


def _bore(index: int, bore: Bore) -> str:
    words = ["dpsproxy", "--to.addr", quote(bore.target), "--local.addr", f"localhost:{bore.target_port}"]
    if bore.secret is not None:
        words += ["--secret", f'"$(cat "$GRID_STEP_DIR/bore{index}.secret")"']
    return " ".join([*words, "-r", "&"])


def wireguard_conf(wireguard: Wireguard) -> str:
    """A wg-quick configuration with only the keys the reference writes (single quotes removed)."""
    lines = ["[Interface]"]
    if wireguard.address:
        lines.append(f"Address = {','.join(wireguard.address)}")
    lines.append(f"PrivateKey = {wireguard.private_key.replace(chr(39), '')}")
    for peer in wireguard.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key.replace(chr(39), '')}"]
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {','.join(peer.allowed_ips)}")
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.pre_shared_key:
            lines.append(f"PresharedKey = {peer.pre_shared_key.replace(chr(39), '')}")
        if peer.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def vnet_directory(network: int) -> str:
    return f'"$STORAGE_PATH/.grid/vnet{network}"'


def render_vnet_conf(out: ScriptBuilder, index: int, vnet: VNet, where: PeerIndex) -> None:
    """The peer's configuration, read from the gateway's files when the step runs."""
    folder = f"$STORAGE_PATH/.grid/vnet{where.network}"
    network = ipaddress.ip_interface(vnet.address).network
    out.line(
        "printf '[Interface]\\nAddress = %s\\nPrivateKey = %s\\n\\n[Peer]\\nPublicKey = %s\\n"
        "AllowedIPs = %s\\nEndpoint = %s:%s\\nPersistentKeepalive = 20\\n' "
        f"{quote(vnet.address)} "
        f'"$(cat "{folder}/peer{where.peer}.key")" "$(cat "{folder}/gateway.pub")" {quote(str(network))} '
        f'"$(cat "{folder}/endpoint")" "$(cat "{folder}/port")" >"$grid_step_dir/vnet{index}.conf"'
    )


def enroot_conf(container: Container) -> str:
    """The Enroot container configuration: settings, environment, the mounts, the rc.local hook."""
    lines = [
        "#ENROOT_REMAP_ROOT=n",
        f"#ENROOT_ROOTFS_WRITABLE={'n' if container.read_only_root_fs else 'y'}",
        f"#ENROOT_MOUNT_HOME={'y' if container.mount_home else 'n'}",
        "",
        "environ() {",
        "  local grid_variable",
        "  while IFS= read -r -d '' grid_variable; do",
        "    [[ \"$grid_variable\" == *$'\\n'* ]] || printf '%s\\n' \"$grid_variable\"",
        "  done < <(env -0)",
        '  cat "${ENROOT_ROOTFS}/etc/environment" 2>/dev/null || true',
    ]
    lines += [f'  echo "{key}={value}"' for key, value in CONTAINER_VALUES]
    lines += [
        '  echo "DEEPSQUARE_ENV=/deepsquare/$(basename "$DEEPSQUARE_ENV")"',
        "}",
        "",
        "mounts() {",
    ]
    lines += [f'  echo "${variable} {target} none x-create=dir,bind,rw"' for variable, target in CACHE_MOUNTS]
    if container.x11:
        lines.append(f'  echo "{X11} {X11} none x-create=dir,bind,ro"')
    for mount in container.mounts:
        options = "x-create=auto,bind" + (f",{mount.options.value}" if mount.options.value else "")
        lines.append(f"  echo '{mount.host_dir} {mount.container_dir} none {options}'")
    lines += [
        "}",
        "",
        "hooks() {",
        '  cp -- "$GRID_STEP_DIR/rc.local" "${ENROOT_ROOTFS}/etc/rc.local"',
        "}",
    ]
    return "\n".join(lines) + "\n"


def enroot_rc_local(job: Job, run: StepRun) -> str:
    """Sourced by the image's /etc/rc: the variables, the working directory, and the command itself
    instead of the image's ENTRYPOINT (except in ENTRYPOINT mode)."""
    lines = [f"export {env.key}={quote(env.value)}" for env in [*job.env, *run.env]]
    if run.work_dir:
        lines.append(_work_dir_prefix(run.work_dir).rstrip())
    if not run.is_entrypoint:
        lines.append('exec "$@"')
    return "\n".join(lines) + "\n"


def host_work_dir(work_dir: str) -> str:
    """A host step's workDir as a bash word: taken inside the job's folder, as an absolute image
    path is (`/output` is `$STORAGE_PATH/output`), so that no step starts outside the job."""
    return '"$STORAGE_PATH"' + quote(posixpath.normpath("/" + work_dir.lstrip("/")))


def _work_dir_prefix(work_dir: str, host: bool = False) -> str:
    directory = host_work_dir(work_dir) if host else quote(work_dir)
    return (
        f"mkdir -p -- {directory} && cd -- {directory}"
        ' || { echo "change dir to working directory failed"; exit 1; }\n'
    )


def command_arguments(run: StepRun, shell: str) -> list[str]:
    """What follows the container: the split ENTRYPOINT arguments, nothing, or `<shell> -c <command>`."""
    if run.is_entrypoint:
        return [quote(word) for word in shlex.split(run.command)]
    if run.command == "":
        return []
    return [shell, "-c", quote(run.command)]


class RunRenderer:
    """Renders `run` steps for one job."""

    def __init__(
        self,
        job: Job,
        images: dict[tuple[object, ...], Image],
        peers: dict[str, list[str]],
        software_root: str,
    ) -> None:
        self.job = job
        self.images = images
        self.peers = peers
        self.software_root = software_root
        self.networks = {network.name: index for index, network in enumerate(job.virtual_networks)}

    def srun_options(self, name: str | None, run: StepRun) -> list[str]:
        res = self.job.resources
        tasks = run.resources.tasks
        gpus = run.resources.gpus_per_task
        options = []
        if name:
            options.append(f"--job-name={quote(name)}")
        options += [
            "--export=ALL",
            f"--cpus-per-task={run.resources.cpus_per_task or res.cpus_per_task}",
            f"--mem-per-cpu={run.resources.mem_per_cpu or res.mem_per_cpu}M",
            f"--gpus-per-task={gpus}",
            f"--gpus={gpus * tasks}",
            f"--ntasks={tasks}",
        ]
        if run.mpi is not None:
            options.append(f"--mpi={run.mpi.value}")
        if run.disable_cpu_binding:
            options.append("--cpu-bind=none")
        if run.container is not None:
            options.append("--gpu-bind=none")
        return options

    def render(self, out: ScriptBuilder, name: str | None, run: StepRun) -> None:
        out.line("grid_load_env")
        env: list[str] = []
        if self._needs_step_dir(run):
            out.line('grid_step_dir="$(mktemp -d "$STORAGE_PATH/.grid/step.XXXXXX")"')
            self._prepare_files(out, run)
            env.append('GRID_STEP_DIR="$grid_step_dir"')
        if run.container is None:
            env += [f"{e.key}={quote(e.value)}" for e in run.env]
            words = self._host_words(run)
        elif run.container.uses_apptainer:
            env += self._apptainer_env(run, run.container)
            words = self._apptainer_words(run, run.container)
        else:
            words = self._enroot_words(run, run.container)
        out.line(" ".join([*env, "srun", *self.srun_options(name, run), "\\"]))
        out.line("  " + " ".join(words))

    @staticmethod
    def _needs_step_dir(run: StepRun) -> bool:
        enroot = run.container is not None and not run.container.uses_apptainer
        return enroot or run.namespaced

    def _prepare_files(self, out: ScriptBuilder, run: StepRun) -> None:
        if run.container is not None and not run.container.uses_apptainer:
            out.line(printf_file(enroot_conf(run.container), '"$grid_step_dir/enroot.conf"'))
            out.line(printf_file(enroot_rc_local(self.job, run), '"$grid_step_dir/rc.local"'))
        if not run.namespaced:
            return
        for index, kind in run.interfaces:
            if isinstance(kind, Wireguard):
                out.line(printf_file(wireguard_conf(kind), f'"$grid_step_dir/wg{index}.conf"'))
            elif isinstance(kind, VNet):
                network = self.networks[kind.name]
                peer = self.peers[kind.name].index(kind.ip)
                render_vnet_conf(out, index, kind, PeerIndex(network, peer))
            elif kind.secret is not None:
                out.line(printf_file(kind.secret, f'"$grid_step_dir/bore{index}.secret"'))
        if run.dns:
            servers = "".join(f"nameserver {server}\n" for server in run.dns)
            out.line(printf_file(servers, '"$grid_step_dir/resolv.conf"'))

    def _wrapped(self, run: StepRun, command: str) -> str:
        """`command` as the step runs it: directly, or inside its network namespace."""
        if not run.namespaced:
            return command
        return f"/bin/sh -c {quote(network_wrapper(run, inner_script(run, command)))}"

    def _host_words(self, run: StepRun) -> list[str]:
        text = (_work_dir_prefix(run.work_dir, host=True) if run.work_dir else "") + run.command
        command = f"{run.host_shell} -c {quote(text)}"
        return [*id_prefix(run), self._wrapped(run, command)]

    def _apptainer_env(self, run: StepRun, container: Container) -> list[str]:
        binds = [f"${variable}:{target}:rw" for variable, target in CACHE_MOUNTS]
        if container.x11:
            binds.append(f"{X11}:{X11}:ro")
        for mount in container.mounts:
            binds.append(
                f"{mount.host_dir}:{mount.container_dir}"
                + (f":{mount.options.value}" if mount.options.value else "")
            )
        env = [f'APPTAINER_BIND="{",".join(binds)}"']
        env += [f"APPTAINERENV_{key}={quote(value)}" for key, value in CONTAINER_VALUES]
        env.append(f"APPTAINERENV_DEEPSQUARE_ENV={CONTAINER_ENV_FILE}")
        env += [f"APPTAINERENV_{e.key}={quote(e.value)}" for e in run.env]
        return env

    def _apptainer_words(self, run: StepRun, container: Container) -> list[str]:
        verb = "run" if run.is_entrypoint or run.command == "" else "exec"
        words = ["apptainer", "--silent", verb, "--disable-cache", "--contain"]
        if not container.read_only_root_fs:
            words.append("--writable-tmpfs")
        if not container.mount_home:
            words.append("--no-home")
        words += ["--nv", "--pwd", quote(run.work_dir or "/")]
        words.append(image_word(container, self.images, self.software_root))
        words += command_arguments(run, run.shell.value)
        if run.namespaced:
            return [self._wrapped(run, " ".join(words))]
        return [*id_prefix(run), *words]

    def _enroot_words(self, run: StepRun, container: Container) -> list[str]:
        start = ["enroot", "start", "--conf", '"$GRID_STEP_DIR/enroot.conf"', CONTAINER_NAME]
        start += command_arguments(run, run.shell.value)
        if run.namespaced:
            launch = self._wrapped(run, " ".join(start))
        else:
            launch = " ".join([*id_prefix(run), *start])
        task = (
            "set -e\n"
            f"enroot create --name {CONTAINER_NAME} -- {image_word(container, self.images, self.software_root)}"
            " >/dev/null\n"
            f"trap 'enroot remove -f {CONTAINER_NAME} >/dev/null 2>&1 || true' EXIT\n"
            f"{launch}\n"
        )
        return ["/bin/bash", "-c", quote(task)]
