"""Renders a validated workflow into a bash batch script (WORKFLOW.md, rendering rules).

The script is plain bash with `set -euo pipefail`. Every workflow value goes through `quote()`;
the only unquoted text is the fixed scaffolding below. Steps that need their own failure handling
(catch, finally, launch, parallel iterations) run in subshells with `set -e` switched on inside and
their status collected outside, so `set -e` semantics stay intact in every branch.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from sbatch_service.models import Container, Job, Shell, Step, StepFor, StepLaunch, StepRun
from sbatch_service.names import NameSource, RandomNames
from sbatch_service.script import ScriptBuilder, quote

CONTAINER_STORAGE = "/deepsquare"
RESERVED_ENV_CASE = (
    "PATH | LD_LIBRARY_PATH | IFS | BASH_ENV | ENV | SHELLOPTS | BASHOPTS | STORAGE_PATH | DEEPSQUARE_* "
    "| SLURM_* | GRID_* | grid_*"
)

PREAMBLE_FUNCTIONS = f"""
grid_reserved() {{
  case "$1" in
    {RESERVED_ENV_CASE}) return 0 ;;
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
  while [ ! -e "$status_file" ]; do
    sleep 1
  done
  return "$(cat "$status_file")"
}}

# Send a signal to a launched step and everything it started (its own process group).
grid_signal() {{
  kill -n "$1" -- "-$2" 2>/dev/null || true
}}

grid_cleanup() {{
  local pid
  for pid in "${{grid_launches[@]}}"; do
    grid_signal 15 "$pid"
  done
  wait
  rm -rf -- "$STORAGE_PATH"
}}
"""

STORAGE_SETUP = """
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
"""

# Runs inside each srun task of an Enroot step: a container per task, removed when the task ends.
# Arguments: name prefix, image file, `enroot start` options, `--`, command and arguments.
ENROOT_RUNNER = f"""set -eu
grid_name="$1-${{SLURM_JOB_ID:-0}}-${{SLURM_STEP_ID:-0}}-${{SLURM_PROCID:-0}}"
grid_image="$2"
shift 2
grid_options=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  grid_options+=("$1")
  shift
done
shift
while IFS= read -r grid_line || [ -n "$grid_line" ]; do
  grid_key="${{grid_line%%=*}}"
  case "$grid_key" in
    {RESERVED_ENV_CASE}) continue ;;
  esac
  if [[ "$grid_line" == *=* && "$grid_key" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]]; then
    grid_options+=(--env "$grid_key")
  fi
done <"$DEEPSQUARE_ENV"
enroot create --name "$grid_name" "$grid_image"
trap 'enroot remove -f "$grid_name"' EXIT
enroot start "${{grid_options[@]}}" "$grid_name" "$@"
"""

JOB_VARIABLES = ("NTASKS", "CPUS_PER_TASK", "MEM_PER_CPU", "GPUS", "CPUS", "MEM")


@dataclass(frozen=True)
class RenderOptions:
    """Site settings that shape the script: where the per-job storage folders live."""

    storage_root: str = "/opt/cache/shared"


@dataclass(frozen=True)
class _Image:
    """A container image fetched once per job; `path` is a bash word (already quoted)."""

    path: str
    apptainer: bool


@dataclass
class _Scope:
    """What a step can see: loop variables, launch handles, and whether it runs in a catch."""

    loop_vars: tuple[str, ...] = ()
    handles: dict[str, str] = field(default_factory=dict)
    in_catch: bool = False

    def child(self, **changes: object) -> _Scope:
        scope = _Scope(self.loop_vars, dict(self.handles), self.in_catch)
        for key, value in changes.items():
            setattr(scope, key, value)
        return scope


def _image_key(container: Container) -> tuple[bool, str | None, str, str | None, str | None]:
    return (container.apptainer, container.registry, container.image, container.username, container.password)


def _all_runs(steps: list[Step]) -> list[StepRun]:
    runs: list[StepRun] = []
    for step in steps:
        if step.run is not None:
            runs.append(step.run)
        for children in (
            step.steps,
            step.for_.steps if step.for_ else None,
            step.launch.steps if step.launch else None,
            step.catch,
            step.finally_,
        ):
            if children:
                runs.extend(_all_runs(children))
    return runs


class _Renderer:
    def __init__(self, job: Job, names: NameSource, options: RenderOptions) -> None:
        self.job = job
        self.names = names
        self.options = options
        self.out = ScriptBuilder()
        self.counter = 0
        self.images: dict[tuple[bool, str | None, str, str | None, str | None], _Image] = {}
        self.uses_enroot = any(r.container and not r.container.apptainer for r in _all_runs(job.steps))

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    # ---- the whole script

    def render(self) -> str:
        out = self.out
        out.line("#!/bin/bash")
        out.line("# Rendered by grid-sbatch from a workflow. Resources come from the sbatch command line.")
        out.line("# Workflow values are single-quoted on purpose: they expand in the step's shell, not here.")
        out.line("# shellcheck disable=SC2016,SC1003")
        out.line("true")
        out.line("set -euo pipefail")
        out.line("umask 077")
        out.line()
        self._job_variables()
        out.line()
        out.lines(PREAMBLE_FUNCTIONS)
        out.line()
        out.line(f"grid_storage_root={quote(self.options.storage_root)}")
        out.lines(STORAGE_SETUP)
        if self.uses_enroot:
            out.line(f"grid_enroot_runner={quote(ENROOT_RUNNER)}")
        self._fetch_images()
        out.line()
        self._steps(self.job.steps, _Scope())
        out.line("wait")
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
            self.out.line(f"export {name}={quote(value)}")
        for env in self.job.env:
            self.out.line(f"export {env.key}={quote(env.value)}")

    def _fetch_images(self) -> None:
        """Import or pull each distinct image once, before any step runs."""
        credentials_written = False
        for run in _all_runs(self.job.steps):
            container = run.container
            if container is None or _image_key(container) in self.images:
                continue
            if container.is_local_file:
                self.images[_image_key(container)] = _Image(quote(container.image), container.apptainer)
                continue
            suffix = "sif" if container.apptainer else "sqsh"
            path = f'"$STORAGE_PATH/images/{self.names.next_name("image")}.{suffix}"'
            self.images[_image_key(container)] = _Image(path, container.apptainer)
            if container.apptainer:
                self._apptainer_pull(container, path)
            else:
                if container.username is not None and not credentials_written:
                    self.out.line('export ENROOT_CONFIG_PATH="$STORAGE_PATH/enroot"')
                    self.out.line('mkdir -p -- "$ENROOT_CONFIG_PATH"')
                    credentials_written = True
                self._enroot_import(container, path)

    def _enroot_import(self, container: Container, path: str) -> None:
        if container.username is not None and container.password is not None:
            machine = container.registry or "auth.docker.io"
            self.out.line(
                "printf 'machine %s login %s password %s\\n' "
                f"{quote(machine)} {quote(container.username)} {quote(container.password)} "
                '>>"$ENROOT_CONFIG_PATH/.credentials"'
            )
        source = f"{container.registry}#{container.image}" if container.registry else container.image
        self.out.line(f"enroot import -o {path} -- {quote('docker://' + source)}")

    def _apptainer_pull(self, container: Container, path: str) -> None:
        source = f"{container.registry}/{container.image}" if container.registry else container.image
        prefix = ""
        if container.username is not None and container.password is not None:
            prefix = (
                f"APPTAINER_DOCKER_USERNAME={quote(container.username)} "
                f"APPTAINER_DOCKER_PASSWORD={quote(container.password)} "
            )
        self.out.line(f"{prefix}apptainer pull {path} {quote('docker://' + source)}")

    # ---- step lists and steps

    def _steps(self, steps: list[Step], scope: _Scope) -> None:
        """Steps in order; launches of this list get their signal when the list ends."""
        scope = scope.child()
        launched: list[tuple[StepLaunch, str]] = []
        for step in steps:
            self._step(step, scope, launched)
        for launch, pid_var in launched:
            if launch.signal_on_parent_step_exit:
                self.out.line(f'grid_signal {quote(launch.signal_on_parent_step_exit)} "${pid_var}"')

    def _step(self, step: Step, scope: _Scope, launched: list[tuple[StepLaunch, str]]) -> None:
        for handle in step.depends_on:
            self.out.line(f'grid_await "${scope.handles[handle]}"')
        if step.if_ is not None:
            with self.out.block(f"if /bin/bash -c {quote(step.if_)}; then", "fi"):
                self._protected(step, scope, launched)
        else:
            self._protected(step, scope, launched)

    def _protected(self, step: Step, scope: _Scope, launched: list[tuple[StepLaunch, str]]) -> None:
        """A step with catch/finally runs in a subshell whose status decides what follows."""
        if step.catch is None and step.finally_ is None:
            self._kind(step, scope, launched)
            return
        status = f"grid_status_{self.next_id()}"
        self._subshell_status(status, lambda: self._kind(step, scope, []))
        if step.catch is not None:
            catch = step.catch
            with self.out.block(f'if [ "${status}" -ne 0 ]; then', "fi"):

                def body() -> None:
                    self.out.line(f'export DEEPSQUARE_ERROR_CODE="${status}"')
                    self._steps(catch, scope.child(in_catch=True))

                self._subshell_status(status, body)
        if step.finally_ is not None:
            final = step.finally_
            final_status = f"grid_status_{self.next_id()}"
            self._subshell_status(final_status, lambda: self._steps(final, scope))
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

    def _kind(self, step: Step, scope: _Scope, launched: list[tuple[StepLaunch, str]]) -> None:
        if step.run is not None:
            self._run(step.run, scope)
        elif step.steps is not None:
            self._steps(step.steps, scope)
        elif step.for_ is not None:
            self._for(step.for_, scope)
        elif step.launch is not None:
            pid_var = self._launch(step.launch, scope)
            if step.launch.handle_name is not None:
                scope.handles[step.launch.handle_name] = pid_var
            launched.append((step.launch, pid_var))

    # ---- for and launch

    def _for(self, loop: StepFor, scope: _Scope) -> None:
        variable = "item" if loop.items is not None else "index"
        number = self.next_id()
        if loop.items is not None:
            items = f"grid_items_{number}"
            self.out.line(f"{items}=({' '.join(quote(i) for i in loop.items)})")
            header = f'for item in "${{{items}[@]}}"; do'
        else:
            assert loop.range is not None
            begin, end, step = loop.range.begin, loop.range.end, loop.range.increment
            compare = "<=" if step > 0 else ">="
            header = f"for ((index = {begin}; index {compare} {end}; index += {step})); do"
        inner = scope.child(loop_vars=(*scope.loop_vars, variable))
        if not loop.parallel:
            with self.out.block(header, "done"):
                self.out.line(f"export {variable}")
                self._steps(loop.steps, inner)
            return
        pids, status = f"grid_pids_{number}", f"grid_status_{number}"
        self.out.line(f"{pids}=()")
        with self.out.block(header, "done"):
            with self.out.block("(", ") &"):
                self.out.line("set -e")
                self.out.line(f"export {variable}")
                self._steps(loop.steps, inner)
            self.out.line(f'{pids}+=("$!")')
        self.out.line(f"{status}=0")
        with self.out.block(f'for grid_pid in "${{{pids}[@]}}"; do', "done"):
            self.out.line(f'wait "$grid_pid" || {status}=$?')
        self.out.line(f'if [ "${status}" -ne 0 ]; then exit "${status}"; fi')

    def _launch(self, launch: StepLaunch, scope: _Scope) -> str:
        """Runs in the background in its own process group; its status lands in a file for dependsOn."""
        pid_var = f"grid_launch_{self.next_id()}"
        self.out.line("set -m")
        with self.out.block("(", ") &"):
            self.out.line("set +m")
            self.out.line('trap \'echo "$?" >"$STORAGE_PATH/.grid/launch-$BASHPID.rc"\' EXIT')
            self.out.line("set -e")
            self._steps(launch.steps, scope)
        self.out.line(f"{pid_var}=$!")
        self.out.line("set +m")
        self.out.line(f'grid_launches+=("${pid_var}")')
        return pid_var

    # ---- run steps

    def _srun_options(self, run: StepRun) -> list[str]:
        res = self.job.resources
        tasks = run.resources.tasks
        cpus = run.resources.cpus_per_task or res.cpus_per_task
        mem = run.resources.mem_per_cpu or res.mem_per_cpu
        options = [
            f"--ntasks={quote(tasks)}",
            f"--cpus-per-task={quote(cpus)}",
            f"--mem-per-cpu={quote(f'{mem}M')}",
        ]
        # Without GPU flags a step would see every GPU of the job; a job without GPUs needs none
        # (and a site without GPU resources may refuse them).
        if res.gpus > 0 or run.resources.gpus_per_task > 0:
            options.append(f"--gpus-per-task={quote(run.resources.gpus_per_task)}")
            options.append(f"--gpus={quote(tasks * run.resources.gpus_per_task)}")
        if run.mpi is not None:
            options.append(f"--mpi={quote(run.mpi.value)}")
        if run.disable_cpu_binding:
            options.append("--cpu-bind=none")
        options.append("--export=ALL")
        return options

    def _run(self, run: StepRun, scope: _Scope) -> None:
        self.out.line("grid_load_env")
        options = self._srun_options(run)
        if run.container is None:
            work_dir = quote(run.work_dir) if run.work_dir else '"$STORAGE_PATH"'
            options.append(f"--chdir={work_dir}")
            env = [quote(f"{e.key}={e.value}") for e in run.env]
            command = [quote(run.shell.value), "-c", quote(run.command)]
            words = ["env", *env, *command] if env else command
            self._emit_srun(options, words)
        elif run.container.apptainer:
            self._emit_srun(options, self._apptainer_words(run, run.container, scope))
        else:
            self._emit_srun(options, self._enroot_words(run, run.container, scope))

    def _emit_srun(self, options: list[str], words: list[str]) -> None:
        self.out.line("srun " + " ".join(options) + " \\")
        self.out.line("  " + " ".join(words))

    @staticmethod
    def _container_env() -> list[tuple[str, str]]:
        """The storage folder as the container sees it."""
        return [
            ("STORAGE_PATH", CONTAINER_STORAGE),
            ("DEEPSQUARE_INPUT", f"{CONTAINER_STORAGE}/input"),
            ("DEEPSQUARE_OUTPUT", f"{CONTAINER_STORAGE}/output"),
            ("DEEPSQUARE_ENV", f"{CONTAINER_STORAGE}/env"),
        ]

    def _inner_command(self, run: StepRun, work_dir: str | None) -> list[str]:
        if run.shell is Shell.ENTRYPOINT:
            return [quote(arg) for arg in shlex.split(run.command)]
        script = run.command if work_dir is None else f"cd {quote(work_dir)} || exit 1\n{run.command}"
        return [quote(run.shell.value), "-c", quote(script)]

    def _enroot_words(self, run: StepRun, container: Container, scope: _Scope) -> list[str]:
        image = self.images[_image_key(container)]
        start: list[str] = []
        if not container.read_only_root_fs:
            start.append("--rw")
        start += ["--mount", f'"$STORAGE_PATH:{CONTAINER_STORAGE}"']
        if container.x11:
            start += ["--mount", quote("/tmp/.X11-unix:/tmp/.X11-unix"), "--env", "DISPLAY"]
        for key, value in self._container_env():
            start += ["--env", quote(f"{key}={value}")]
        passed = [*JOB_VARIABLES, *(e.key for e in self.job.env), *scope.loop_vars]
        if scope.in_catch:
            passed.append("DEEPSQUARE_ERROR_CODE")
        for key in passed:
            start += ["--env", key]
        for env in run.env:
            start += ["--env", quote(f"{env.key}={env.value}")]
        work_dir = None if run.shell is Shell.ENTRYPOINT else (run.work_dir or CONTAINER_STORAGE)
        mount_home = quote("y" if container.mount_home else "n")
        return [
            "env",
            f"ENROOT_MOUNT_HOME={mount_home}",
            "/bin/bash",
            "-c",
            '"$grid_enroot_runner"',
            "grid-enroot",
            quote(self.names.next_name("step")),
            image.path,
            *start,
            "--",
            *self._inner_command(run, work_dir),
        ]

    def _apptainer_words(self, run: StepRun, container: Container, scope: _Scope) -> list[str]:
        image = self.images[_image_key(container)]
        env = [*self._container_env(), *((e.key, e.value) for e in run.env)]
        words = ["env", *(quote(f"APPTAINERENV_{key}={value}") for key, value in env)]
        verb = "run" if run.shell is Shell.ENTRYPOINT else "exec"
        words += ["apptainer", verb, "--contain"]
        if not container.read_only_root_fs:
            words.append("--writable-tmpfs")
        if not container.mount_home:
            words.append("--no-home")
        words += ["--nv", "--pwd", quote(run.work_dir or CONTAINER_STORAGE)]
        words += ["--bind", f'"$STORAGE_PATH:{CONTAINER_STORAGE}"']
        if container.x11:
            words += ["--bind", quote("/tmp/.X11-unix")]
        words.append(image.path)
        if run.shell is Shell.ENTRYPOINT:
            words += self._inner_command(run, None)
        else:
            words += [quote(run.shell.value), "-c", quote(run.command)]
        return words


def render(job: Job, names: NameSource | None = None, options: RenderOptions | None = None) -> str:
    """The batch script of a validated job; deterministic for a given name source."""
    return _Renderer(job, names or RandomNames(), options or RenderOptions()).render()
