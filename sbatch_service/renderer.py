"""Renders a validated workflow into a bash batch script (WORKFLOW-REFERENCE.md section 2).

The script is plain bash with `set -euo pipefail`. Every workflow value goes through `quote()`;
the only unquoted text is the fixed scaffolding, validated names and integers. Its order is the
reference's: storage and caches, virtual network gateways, input, continuous output sync, the job's
variables, the steps, the signals to launched steps, output. Steps that need their own failure
handling (catch, finally, launch, parallel iterations, modules) run in subshells with `set -e`
switched on inside and their status collected outside, so `set -e` keeps its meaning everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sbatch_service.logging_render import logging_prologue
from sbatch_service.models import (
    FORBIDDEN_ENV_KEYS,
    LOOP_VARIABLES,
    RESERVED_ENV_PREFIXES,
    Container,
    Job,
    Step,
    StepFor,
    StepLaunch,
    StepRun,
    StepUse,
    walk,
)
from sbatch_service.names import NameSource, RandomNames
from sbatch_service.runsteps import (
    PRIVATE_WIREGUARD_SOCKETS,
    Image,
    RunRenderer,
    image_key,
    image_url,
    peers_of,
    vnet_directory,
)
from sbatch_service.script import ScriptBuilder, quote
from sbatch_service.transfer import helper_functions, render_input, render_output, render_sync_start

# $DEEPSQUARE_ENV may not set what a workflow's env may not set (names exactly, prefixes in any
# case, upper-cased by grid_reserved), nor the loop variables and the script's own grid_* variables.
RESERVED_ENV_EXACT = " | ".join([*LOOP_VARIABLES, "grid_*"])
RESERVED_ENV_UPPER = " | ".join(
    [*sorted(FORBIDDEN_ENV_KEYS), *(f"{prefix}*" for prefix in RESERVED_ENV_PREFIXES)]
)
IMPORT_CHECKS = 9
IMPORT_CHECK_INTERVAL_S = 10
CLEANUP_GRACE_TENTHS = 100

PREAMBLE_FUNCTIONS = f"""
grid_reserved() {{
  case "$1" in
    {RESERVED_ENV_EXACT}) return 0 ;;
  esac
  case "${{1^^}}" in
    {RESERVED_ENV_UPPER}) return 0 ;;
  esac
  return 1
}}

# Export the KEY=value lines that earlier steps wrote to $DEEPSQUARE_ENV.
grid_load_env() {{
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    key="${{line%%=*}}"
    if [[ "$line" == *=* && "$key" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]] && ! grid_reserved "$key"; then
      export "$key=${{line#*=}}" 2>/dev/null || true
    fi
  done <"$DEEPSQUARE_ENV"
}}

# Wait for a launched step (its pid) and return its exit status, also from another subshell.
grid_await() {{
  local status_file="$STORAGE_PATH/.grid/launch-$1.rc"
  wait "$1" 2>/dev/null || true
  while [ ! -e "$status_file" ] && kill -0 "$1" 2>/dev/null; do
    sleep 0.2
  done
  if [ -e "$status_file" ]; then
    return "$(cat "$status_file")"
  fi
  return 1
}}

# Send a signal to a launched step and everything it started (its own process group).
grid_signal() {{
  kill -s "$1" -- "-$2" 2>/dev/null || true
}}

# Wait until a launched step has ended, whichever shell started it: its whole process group, so an
# srun still cancelling its Slurm step after a signal is waited for too.
grid_reap() {{
  wait "$1" 2>/dev/null || true
  while kill -0 -- "-$1" 2>/dev/null; do
    sleep 0.1
  done
}}

# A launch body or the job ends: signal the steps it launched (signalOnParentStepExit), wait for them.
grid_end_scope() {{
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
}}

grid_cleanup() {{
  if declare -F grid_log_stop >/dev/null; then grid_log_stop; fi
  local scope pid signal tries
  for scope in "$STORAGE_PATH"/.grid/scope-*; do
    [ -e "$scope" ] || continue
    while read -r pid signal; do
      grid_signal TERM "$pid"
    done <"$scope"
  done
  for pid in "${{grid_background[@]}}"; do
    kill "$pid" 2>/dev/null || true
  done
  for scope in "$STORAGE_PATH"/.grid/scope-*; do
    [ -e "$scope" ] || continue
    while read -r pid signal; do
      tries=0
      while kill -0 -- "-$pid" 2>/dev/null && [ "$tries" -lt {CLEANUP_GRACE_TENTHS} ]; do
        sleep 0.1
        tries=$((tries + 1))
      done
      grid_signal KILL "$pid"
    done <"$scope"
  done
  wait
  chmod -R u+rwX -- "$STORAGE_PATH" 2>/dev/null || true
  rm -rf -- "$STORAGE_PATH"
}}
"""

EXPORT_OUTPUTS_FUNCTION = """
# A module's outputs: the last KEY=value line of each KEY in its private file, as PREFIX_KEY=value.
grid_export_outputs() {
  local prefix="$1" private="$2" parent="$3" key line value found
  shift 3
  for key in "$@"; do
    found=0
    while IFS= read -r line || [ -n "$line" ]; do
      if [[ "$line" == "$key="* ]]; then
        value="${line#*=}"
        found=1
      fi
    done <"$private"
    if [ "$found" = 1 ]; then
      printf '%s_%s=%s\\n' "$prefix" "$key" "$value" >>"$parent"
    fi
  done
}
"""

# The site's cache folders (the world ones made by the provider); where one is missing or cannot be
# made, the job's own mount point stands in, so the job still runs, with a notice in its output.
CACHE_FALLBACKS = """
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
"""

PREPARE_NODES = """
for grid_node in $(scontrol show hostnames "$SLURM_NODELIST"); do
  srun --job-name=prepare-dir -N 1-1 -n 1 --gpus=0 -w "$grid_node" \\
    sh -c 'mkdir -p -- "$DEEPSQUARE_DISK_TMP" && chmod 700 -- "$DEEPSQUARE_DISK_TMP"'
done
"""

GATEWAY_PORT = (
    "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    's.bind(("", 0)); print(s.getsockname()[1]); s.close()\''
)

JOB_VARIABLES = ("NTASKS", "CPUS_PER_TASK", "MEM_PER_CPU", "GPUS", "CPUS", "MEM")


@dataclass(frozen=True)
class RenderOptions:
    """Site settings that shape the script: where the job folders, caches and hosted images live.

    `{uid}` and `{gid}` in a path stand for the job user's ids. Empty Enroot and Apptainer paths
    leave the site's own configuration of those tools alone.
    """

    storage_root: str = "/opt/cache/shared"
    shared_tmp: str = "/opt/cache/persistent/user-{uid}"
    shared_world_tmp: str = "/opt/cache/world-tmp"
    disk_tmp: str = "/opt/cache/disk/tmp/user-{uid}"
    disk_world_tmp: str = "/opt/cache/disk/world-tmp"
    software_root: str = "/opt/software"
    enroot_runtime_path: str = ""
    enroot_cache_path: str = ""
    enroot_data_path: str = ""
    apptainer_tmpdir: str = ""


def _site_path(template: str) -> str:
    """A path setting as a bash word, its {uid} and {gid} replaced by the job user's ids."""
    word = ""
    rest = template
    while rest:
        uid, gid = rest.find("{uid}"), rest.find("{gid}")
        positions = [p for p in (uid, gid) if p >= 0]
        if not positions:
            word += quote(rest)
            break
        cut = min(positions)
        if cut:
            word += quote(rest[:cut])
        word += '"$grid_uid"' if cut == uid else '"$grid_gid"'
        rest = rest[cut + 5 :]
    return word or "''"


def netrc_quoted(value: str) -> str:
    """A value for inside double quotes in Enroot's credentials file (curl's netrc syntax).

    Enroot runs `sh -c "echo <rest of the line>"` on a line whose password starts with `$` (its
    documented `$VAR`/`$(cmd)` substitution); a quoted password starts with `"`, so it is never
    evaluated, and curl reads it back with its `\\` and `\"` escapes undone.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _all_runs(job: Job) -> list[StepRun]:
    return [step.run for _, step in walk(job.steps) if step.run is not None]


class _Renderer:
    def __init__(self, job: Job, names: NameSource, options: RenderOptions) -> None:
        self.job = job
        self.names = names
        self.options = options
        self.out = ScriptBuilder()
        self.counter = 0
        self.loops: list[tuple[str, str]] = []
        self.images: dict[tuple[object, ...], Image] = {}
        runs = _all_runs(job)
        self.runs = RunRenderer(job, self.images, peers_of(job, runs), options.software_root)
        self.uses_modules_outputs = any(
            step.use is not None and step.use.export_env_as for _, step in walk(job.steps)
        )

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    # ---- the whole script

    def render(self) -> str:
        out = self.out
        out.line("#!/bin/bash")
        out.line("# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.")
        out.line("# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.")
        out.line("# Launch bodies and subshells set their own grid_scope on purpose (SC2030, SC2031).")
        out.line("# shellcheck disable=SC2016,SC1003,SC2030,SC2031")
        out.line("true")
        out.line("set -euo pipefail")
        out.line("umask 077")
        out.line()
        self._job_variables()
        out.line()
        if self.job.enable_logging:
            # Streams the job's output to the grid logger from here on; grid_cleanup stops it.
            out.lines(logging_prologue())
        out.lines(PREAMBLE_FUNCTIONS)
        if self.uses_modules_outputs:
            out.lines(EXPORT_OUTPUTS_FUNCTION)
        for block in helper_functions(self.job):
            out.lines(block)
        out.line()
        self._storage()
        self._gateways()
        out.line('cd -- "$STORAGE_PATH"')
        render_input(out, self.job)
        self._fetch_images()
        sync = render_sync_start(out, self.job)
        for env in self.job.env:
            out.line(f"export {env.key}={quote(env.value)}")
        out.line()
        self._steps(self.job.steps)
        out.line('grid_end_scope "$grid_scope"')
        render_output(out, self.job, sync)
        return out.render()

    def _job_variables(self) -> None:
        res = self.job.resources
        values = (
            res.tasks,
            res.cpus_per_task,
            res.mem_per_cpu,
            res.gpus,
            res.tasks * res.cpus_per_task,
            res.mem_per_cpu * res.cpus_per_task * res.tasks,
        )
        for name, value in zip(JOB_VARIABLES, values, strict=True):
            self.out.line(f"export {name}={value}")

    def _storage(self) -> None:
        out, options = self.out, self.options
        out.line('grid_uid="$(id -u)"')
        if any("{gid}" in getattr(options, name) for name in vars(options)):
            out.line('grid_gid="$(id -g)"')
        out.line(f'STORAGE_PATH={_site_path(options.storage_root)}/"$grid_uid/job-${{SLURM_JOB_ID:-$$}}"')
        out.line("readonly STORAGE_PATH")
        out.line("export STORAGE_PATH")
        out.line('export DEEPSQUARE_INPUT="$STORAGE_PATH/input"')
        out.line('export DEEPSQUARE_OUTPUT="$STORAGE_PATH/output"')
        out.line('export DEEPSQUARE_ENV="$STORAGE_PATH/env"')
        out.line(f"export DEEPSQUARE_TMP={_site_path(options.shared_tmp)}")
        out.line('export DEEPSQUARE_SHARED_TMP="$DEEPSQUARE_TMP"')
        out.line(f"export DEEPSQUARE_SHARED_WORLD_TMP={_site_path(options.shared_world_tmp)}")
        out.line(f"export DEEPSQUARE_DISK_TMP={_site_path(options.disk_tmp)}")
        out.line(f"export DEEPSQUARE_DISK_WORLD_TMP={_site_path(options.disk_world_tmp)}")
        for name, value in (
            ("ENROOT_RUNTIME_PATH", options.enroot_runtime_path),
            ("ENROOT_CACHE_PATH", options.enroot_cache_path),
            ("ENROOT_DATA_PATH", options.enroot_data_path),
            ("APPTAINER_TMPDIR", options.apptainer_tmpdir),
        ):
            if value:
                out.line(f"export {name}={_site_path(value)}")
        out.line("grid_scope=job")
        out.line("grid_background=()")
        out.line("trap grid_cleanup EXIT")
        out.line("trap 'exit 143' TERM")
        out.line("trap 'exit 130' INT")
        out.line(
            'mkdir -p -- "$DEEPSQUARE_INPUT" "$DEEPSQUARE_OUTPUT" "$STORAGE_PATH/.grid" "$STORAGE_PATH/images" '
            '"$STORAGE_PATH/tmp" "$STORAGE_PATH/world-tmp" "$STORAGE_PATH/disk/tmp" "$STORAGE_PATH/disk/world-tmp"'
        )
        out.line('chmod 700 -- "$STORAGE_PATH"')
        out.lines(CACHE_FALLBACKS)
        out.line(': >"$DEEPSQUARE_ENV"')
        out.lines(PREPARE_NODES)

    def _gateways(self) -> None:
        """One WireGuard hub per virtual network, in its own namespace, reached through pasta."""
        out = self.out
        for index, network in enumerate(self.job.virtual_networks):
            peers = self.runs.peers[network.name]
            out.line(f"# Virtual network {index}: the gateway of {len(peers)} peers")
            out.line(f"grid_vnet={vnet_directory(index)}")
            out.line('mkdir -p -- "$grid_vnet"')
            out.line(f'{GATEWAY_PORT} >"$grid_vnet/port"')
            out.line('wg genkey >"$grid_vnet/gateway.key"')
            out.line('wg pubkey <"$grid_vnet/gateway.key" >"$grid_vnet/gateway.pub"')
            out.line(
                "ip route get 1 | awk '{for (i = 1; i < NF; i++) if ($i == \"src\") {print $(i + 1); exit}}' "
                '>"$grid_vnet/endpoint"'
            )
            for peer in range(len(peers)):
                out.line(f'wg genkey >"$grid_vnet/peer{peer}.key"')
                out.line(f'wg pubkey <"$grid_vnet/peer{peer}.key" >"$grid_vnet/peer{peer}.pub"')
            conf = f'"$grid_vnet/vnet{index}.conf"'
            with out.block("{", f"}} >{conf}"):
                out.line(
                    "printf '[Interface]\\nAddress = %s\\nListenPort = %s\\nPrivateKey = %s\\n' "
                    f'{quote(network.gateway_address)} "$(cat "$grid_vnet/port")" "$(cat "$grid_vnet/gateway.key")"'
                )
                for peer, ip in enumerate(peers):
                    host = f"{ip}/128" if ":" in ip else f"{ip}/32"
                    out.line(
                        "printf '\\n[Peer]\\nPublicKey = %s\\nAllowedIPs = %s\\n' "
                        f'"$(cat "$grid_vnet/peer{peer}.pub")" {quote(host)}'
                    )
            hub = (
                "set -e\n"
                'PATH="$PATH:/usr/sbin:/sbin"\n'
                "grid_tries=0\n"
                "until ip link show net0 >/dev/null 2>&1; do\n"
                "  grid_tries=$((grid_tries + 1))\n"
                '  if [ "$grid_tries" -ge 40 ]; then echo "the gateway\'s net0 did not appear" >&2; exit 1; fi\n'
                "  sleep 0.5\n"
                "done\n"
                "echo 1 >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true\n"
                "echo 1 >/proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || true\n"
                f"{PRIVATE_WIREGUARD_SOCKETS}\n"
                f'grid_conf="$STORAGE_PATH/.grid/vnet{index}/vnet{index}.conf"\n'
                'trap \'kill "$grid_sleep" 2>/dev/null || true; wg-quick down "$grid_conf" >/dev/null 2>&1 || true\' EXIT\n'
                "trap 'exit 143' TERM\n"
                "trap 'exit 130' INT\n"
                'wg-quick up "$grid_conf"\n'
                "sleep infinity &\n"
                "grid_sleep=$!\n"
                'wait "$grid_sleep"\n'
            )
            out.line(f"unshare --map-root-user --net --mount /bin/sh -c {quote(hub)} &")
            out.line("grid_gateway=$!")
            out.line('grid_background+=("$grid_gateway")')
            out.line("grid_tries=0")
            with out.block(
                'until [ "$(readlink "/proc/$grid_gateway/ns/net")" != "$(readlink /proc/self/ns/net)" ]; do',
                "done",
            ):
                out.line("grid_tries=$((grid_tries + 1))")
                out.line(
                    'if [ "$grid_tries" -ge 40 ]; then echo "the virtual network gateway did not start" >&2; exit 1; fi'
                )
                out.line("sleep 0.5")
            out.line(
                'pasta --config-net --tcp-ports none --udp-ports "$(cat "$grid_vnet/port")" '
                '--netns "/proc/$grid_gateway/ns/net" --userns "/proc/$grid_gateway/ns/user" --ns-ifname net0 --runas "$(id -u):$(id -g)" -q -f &'
            )
            out.line('grid_background+=("$!")')

    def _fetch_images(self) -> None:
        """Import or pull each distinct registry image once, before any step runs."""
        credentials_written = False
        for run in _all_runs(self.job):
            container = run.container
            if container is None or not container.pulled or image_key(container) in self.images:
                continue
            suffix = "sif" if container.uses_apptainer else "sqsh"
            path = f'"$STORAGE_PATH/images/{self.names.next_name("image")}.{suffix}"'
            self.images[image_key(container)] = Image(path)
            if container.uses_apptainer:
                self._apptainer_pull(container, path)
            else:
                if container.username is not None and not credentials_written:
                    self.out.line('export ENROOT_CONFIG_PATH="$STORAGE_PATH/enroot"')
                    self.out.line('mkdir -p -- "$ENROOT_CONFIG_PATH"')
                    credentials_written = True
                self._enroot_import(container, path)

    def _enroot_import(self, container: Container, path: str) -> None:
        out = self.out
        if container.username is not None and container.password is not None:
            machine = container.registry or "auth.docker.io"
            out.line(
                'printf \'machine %s login "%s" password "%s"\\n\' '
                f"{quote(machine)} {quote(container.username)} {quote(netrc_quoted(container.password))} "
                '>>"$ENROOT_CONFIG_PATH/.credentials"'
            )
        out.line('echo "Importing image..."')
        with out.block(
            f'if ! enroot import -o {path} -- {quote(image_url(container))} >"$STORAGE_PATH/.grid/import.log" 2>&1; then',
            "fi",
        ):
            out.line('cat "$STORAGE_PATH/.grid/import.log"')
        out.line("grid_tries=1")
        with out.block(f'until file {path} | grep -q "Squashfs filesystem"; do', "done"):
            with out.block(f'if [ "$grid_tries" -ge {IMPORT_CHECKS + 1} ]; then', "fi"):
                out.line('echo "Image import failure (corrupted image). Please try again."')
                out.line("exit 1")
            out.line(f'echo "Image is not complete. Wait a few seconds... ($grid_tries/{IMPORT_CHECKS + 1})"')
            out.line(f"sleep {IMPORT_CHECK_INTERVAL_S}")
            out.line("grid_tries=$((grid_tries + 1))")
        out.line('echo "Image successfully imported!"')

    def _apptainer_pull(self, container: Container, path: str) -> None:
        prefix = ""
        if container.username is not None and container.password is not None:
            prefix = (
                f"APPTAINER_DOCKER_USERNAME={quote(container.username)} "
                f"APPTAINER_DOCKER_PASSWORD={quote(container.password)} "
            )
        self.out.line('echo "Importing image..."')
        self.out.line(f"{prefix}apptainer --silent pull --disable-cache {path} {quote(image_url(container))}")
        self.out.line('echo "Image successfully imported!"')

    # ---- step lists and steps

    def _steps(self, steps: list[Step]) -> None:
        for step in steps:
            self._step(step)

    def _step(self, step: Step) -> None:
        out = self.out
        for handle in step.handles:
            out.line(f'grid_await "$grid_handle_{handle}"')
        if step.if_ is not None:
            condition = f"grid_condition_{self.next_id()}"
            out.line(f"{condition}={quote(step.if_)}")
            with out.block(f'if (set +u; eval "[[ ${{{condition}}} ]]"); then', "fi"):
                self._named(step)
        else:
            self._named(step)

    def _named(self, step: Step) -> None:
        if step.name:
            self.out.line(f"printf 'Running: %s\\n' {quote(step.name)}")
        self._protected(step)

    def _protected(self, step: Step) -> None:
        """A step with catch/finally runs in a subshell whose status decides what follows."""
        if not step.protected:
            self._kind(step)
            return
        status = f"grid_status_{self.next_id()}"
        self._subshell_status(status, lambda: self._kind(step))
        if step.catch:
            catch = step.catch
            with self.out.block(f'if [ "${status}" -ne 0 ]; then', "fi"):

                def body() -> None:
                    self.out.line(f'export DEEPSQUARE_ERROR_CODE="${status}"')
                    self._steps(catch)

                self._subshell_status(status, body)
        if step.finally_:
            final = step.finally_
            final_status = f"grid_status_{self.next_id()}"
            self._subshell_status(final_status, lambda: self._steps(final))
            self.out.line(f'if [ "${status}" -ne 0 ]; then exit "${status}"; fi')
            self.out.line(f'if [ "${final_status}" -ne 0 ]; then exit "${final_status}"; fi')
        else:
            self.out.line(f'if [ "${status}" -ne 0 ]; then exit "${status}"; fi')

    def _subshell_status(self, status: str, body: Callable[[], None]) -> None:
        self.out.line("set +e")
        with self.out.block("(", ")"):
            self.out.line("set -e")
            body()
        self.out.line(f"{status}=$?")
        self.out.line("set -e")

    def _kind(self, step: Step) -> None:
        kind = step.kind
        if kind == "steps":
            self._steps(step.steps)
        elif kind == "run" and step.run is not None:
            self.runs.render(self.out, step.name, step.run)
        elif kind == "for" and step.for_ is not None:
            self._for(step.for_)
        elif kind == "launch" and step.launch is not None:
            self._launch(step.launch)
        elif kind == "use" and step.use is not None:
            self._use(step.use)

    # ---- for, launch and use

    def _for(self, loop: StepFor) -> None:
        """A loop whose counter is its own grid_* variable, exported as `index` or `item` in the body.

        Nested loops then never share a counter, and the counter is never read back from `index`,
        which a step could have set: bash evaluates a variable's value inside arithmetic, so
        `index=NTASKS[$(cmd)0]` would otherwise run `cmd`. An inner loop gives the enclosing loop's
        value back to `index`/`item` when it ends.
        """
        number = self.next_id()
        if loop.range is not None:
            variable = "index"
            counter = f"grid_index_{number}"
            begin, end, step = loop.range.begin, loop.range.end, loop.range.step
            compare = "<=" if step > 0 else ">="
            header = f"for (({counter} = {begin}; {counter} {compare} {end}; {counter} += {step})); do"
        else:
            variable = "item"
            counter = f"grid_item_{number}"
            items = f"grid_items_{number}"
            self.out.line(f"{items}=({' '.join(quote(i) for i in loop.items)})")
            header = f'for {counter} in "${{{items}[@]}}"; do'
        export = f'export {variable}="${counter}"'
        self.loops.append((variable, counter))
        try:
            if not loop.parallel:
                with self.out.block(header, "done"):
                    self.out.line(export)
                    self._steps(loop.steps)
            else:
                self._parallel(number, header, export, loop)
        finally:
            self.loops.pop()
        enclosing = [c for v, c in self.loops if v == variable]
        if enclosing and not loop.parallel:
            self.out.line(f'export {variable}="${enclosing[-1]}"')

    def _parallel(self, number: int, header: str, export: str, loop: StepFor) -> None:
        pids, status = f"grid_pids_{number}", f"grid_status_{number}"
        self.out.line(f"{pids}=()")
        with self.out.block(header, "done"):
            with self.out.block("(", ") &"):
                self.out.line("set -e")
                self.out.line(export)
                self._steps(loop.steps)
            self.out.line(f'{pids}+=("$!")')
        self.out.line(f"{status}=0")
        with self.out.block(f'for grid_pid in "${{{pids}[@]}}"; do', "done"):
            self.out.line(f'wait "$grid_pid" || {status}=$?')
        self.out.line(f'if [ "${status}" -ne 0 ]; then exit "${status}"; fi')

    def _launch(self, launch: StepLaunch) -> None:
        """In the background, in its own process group; its status lands in a file for dependsOn.

        The launch is registered with the enclosing launch body (or the job), which signals it when it
        ends, as the reference does; a group or a loop in between does not end it.
        """
        out = self.out
        out.line("set -m")
        with out.block("(", ") &"):
            out.line("set +m")
            out.line('trap \'echo "$?" >"$STORAGE_PATH/.grid/launch-$BASHPID.rc"\' EXIT')
            out.line("set -e")
            out.line('grid_scope="launch-$BASHPID"')
            self._steps(launch.steps)
            out.line('grid_end_scope "$grid_scope"')
        out.line("grid_launch=$!")
        out.line("set +m")
        out.line(
            f"printf '%s %s\\n' \"$grid_launch\" {launch.signal_on_parent_step_exit} "
            '>>"$STORAGE_PATH/.grid/scope-$grid_scope"'
        )
        if launch.handle is not None:
            out.line("# shellcheck disable=SC2034")
            out.line(f'grid_handle_{launch.handle}="$grid_launch"')

    def _use(self, use: StepUse) -> None:
        """A module's steps in a subshell, with its inputs exported and its outputs prefixed."""
        module = use.module
        out = self.out
        with out.block("(", ")"):
            for module_input in module.inputs:
                value = module_input.default or ""
                for arg in use.args:
                    if arg.key == module_input.key:
                        value = arg.value
                out.line(f"export {module_input.key}={quote(value)}")
            if use.export_env_as:
                private = f'"$STORAGE_PATH/DEEPSQUARE_{self.names.next_name("module").replace("-", "_")}_env"'
                out.line('grid_parent_env="$DEEPSQUARE_ENV"')
                out.line(f"export DEEPSQUARE_ENV={private}")
                out.line(': >"$DEEPSQUARE_ENV"')
            self._steps(module.steps)
            if use.export_env_as and module.outputs:
                keys = " ".join(output.key for output in module.outputs)
                out.line(
                    f'grid_export_outputs {use.export_env_as} "$DEEPSQUARE_ENV" "$grid_parent_env" {keys}'
                )


def render(job: Job, names: NameSource | None = None, options: RenderOptions | None = None) -> str:
    """The batch script of a validated job (modules resolved); deterministic for a given name source."""
    return _Renderer(job, names or RandomNames(), options or RenderOptions()).render()
