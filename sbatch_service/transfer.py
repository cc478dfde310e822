"""Data in and out of a job: `input` before the steps, `output` after them (WORKFLOW-REFERENCE 2.11-2.12).

The reference uses s5cmd, which Debian does not ship; the AWS CLI (`aws s3`) does the same work here:
`s5cmd cp 's3://b/p*' dir/` becomes `aws s3 cp --recursive` of the prefix's folder filtered to the
names starting with the prefix's last part, and `s5cmd sync [--delete]` becomes `aws s3 sync
[--delete]`. Credentials go to a mode-0600 AWS credentials file of the job, read through
`AWS_SHARED_CREDENTIALS_FILE`, and the tool runs with a cleared environment: they are in no
process's arguments, in no step's environment, and never printed. HTTP credentials written in a URL
(`https://user:password@host/...`) go to a mode-0600 curl or wget configuration file the same way.
"""

from __future__ import annotations

from sbatch_service.models import HTTPData, Job, S3Data
from sbatch_service.rules import split_userinfo
from sbatch_service.script import ScriptBuilder, printf_file, quote

GRID = '"$STORAGE_PATH/.grid"'

# Runs the AWS CLI with only what it needs in its environment. $1 is the credentials file.
S3_FUNCTION = """
grid_s3() {
  local credentials="$1"
  shift
  env -i PATH="$PATH" HOME="$STORAGE_PATH/.grid/aws-home" LANG=C.UTF-8 \\
    AWS_SHARED_CREDENTIALS_FILE="$credentials" AWS_CONFIG_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \\
    aws "$@"
}
"""

LISTING = """
grid_list() {
  printf '%s contains:\\n' "$1"
  find "$2/" -mindepth 1 -exec realpath --relative-to "$2/" {} \\;
}
"""

# Extracts every archive downloaded into the input folder, choosing the tool as the reference does
# (7-zip is tested before zip, which would otherwise catch it).
EXTRACT_FUNCTION = """
grid_extract_input() {
  local archive
  for archive in "$DEEPSQUARE_INPUT/"*; do
    [ -f "$archive" ] || continue
    tar -xaf "$archive" -C "$DEEPSQUARE_INPUT" 2>/dev/null && continue
    case "$(file -b "$archive")" in
      *bzip2*) bzip2 -fdk "$archive" ;;
      *gzip*) gunzip -df "$archive" ;;
      *'7-zip'*) 7z x "$archive" -aoa -o"$DEEPSQUARE_INPUT" ;;
      *zip* | *Zip*) unzip -q -o "$archive" -d "$DEEPSQUARE_INPUT" ;;
      *RAR*) unrar x -o+ "$archive" "$DEEPSQUARE_INPUT/" ;;
      *xz* | *XZ*) unxz -f "$archive" ;;
      *) printf "Unknown archive '%s'\\n" "$archive" >&2 ;;
    esac
  done
}
"""

URLDECODE_FUNCTION = """
grid_urldecode() {
  local text="${1//+/ }"
  printf '%b\\n' "${text//%/\\\\x}"
}
"""


def _s3_credentials(out: ScriptBuilder, s3: S3Data, name: str) -> str:
    """Write the credentials file (once) and return its path as a bash word."""
    path = f'"$STORAGE_PATH/.grid/{name}.credentials"'
    content = (
        f"[default]\naws_access_key_id = {s3.access_key_id}\naws_secret_access_key = {s3.secret_access_key}\n"
    )
    out.line(printf_file(content, path))
    return path


def _s3_common(s3: S3Data) -> str:
    return f"--region {quote(s3.region)} --endpoint-url {quote(s3.endpoint_url)} --no-progress"


def helper_functions(job: Job) -> list[str]:
    """The fixed bash functions the job's input and output need, each once."""
    source = job.input.chosen if job.input else None
    target = job.output.chosen if job.output else None
    blocks = []
    if isinstance(source, S3Data) or isinstance(target, S3Data):
        blocks.append(S3_FUNCTION)
    if source is not None or target is not None:
        blocks.append(LISTING)
    if isinstance(source, HTTPData):
        blocks.append(EXTRACT_FUNCTION)
    if isinstance(target, HTTPData):
        blocks.append(URLDECODE_FUNCTION)
    return blocks


def render_input(out: ScriptBuilder, job: Job) -> None:
    """Pull `input` into $DEEPSQUARE_INPUT, then apply `inputMode` (even without an input)."""
    source = job.input.chosen if job.input else None
    if isinstance(source, HTTPData):
        command = _http_download(out, source.url)
        with out.block('if ! (cd -- "$DEEPSQUARE_INPUT" && ' + command + "); then", "fi"):
            out.line("echo 'input: the download failed' >&2")
            out.line("exit 1")
        out.line("grid_extract_input")
        out.line('chmod -R 700 -- "$DEEPSQUARE_INPUT/" || echo "chmod failed, but we are ignoring it"')
        out.line('grid_list Input "$DEEPSQUARE_INPUT"')
    elif isinstance(source, S3Data):
        credentials = _s3_credentials(out, source, "s3-input")
        folder, _, stem = source.key.rpartition("/")
        prefix = f"s3://{source.bucket}/{folder + '/' if folder else ''}"
        pattern = _fnmatch_escape(stem) + "*"
        with out.block(
            f"if ! grid_s3 {credentials} s3 cp --recursive {_s3_common(source)} {quote(prefix)} "
            f"\"$DEEPSQUARE_INPUT/\" --exclude '*' --include {quote(pattern)}; then",
            "fi",
        ):
            out.line("echo 'input: the download from S3 failed' >&2")
            out.line("exit 1")
        out.line('chmod -R 700 -- "$DEEPSQUARE_INPUT/" || echo "chmod failed, but we are ignoring it"')
        out.line('grid_list Input "$DEEPSQUARE_INPUT"')
    if job.input_mode is not None:
        out.line(f'chmod -R {job.input_mode:o} -- "$DEEPSQUARE_INPUT/"')


def _fnmatch_escape(text: str) -> str:
    """`text` as a literal in the AWS CLI's fnmatch filters."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _curl_config_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _http_download(out: ScriptBuilder, url: str) -> str:
    """The wget command that downloads `url` into the current folder (credentials from a file)."""
    bare, user, password = split_userinfo(url)
    if user is None:
        return f"wget --no-config -q -- {quote(bare)}"
    config = f"{GRID}/wget.conf"
    out.line(printf_file(f"user = {user}\npassword = {password}\n", config))
    return f"wget --config={config} -q -- {quote(bare)}"


def _http_upload(out: ScriptBuilder, url: str, file: str) -> str:
    """The curl command that PUTs `file` to `url` and prints the answer (credentials from a file)."""
    bare, user, password = split_userinfo(url)
    options = "-q -sS --fail-with-body"
    if user is not None:
        config = f"{GRID}/curl.conf"
        out.line(printf_file(f"user = {_curl_config_value(f'{user}:{password}')}\n", config))
        options += f" -K {config}"
    return f'curl {options} --upload-file "{file}" -- {quote(bare)}'


def render_sync_start(out: ScriptBuilder, job: Job) -> bool:
    """Start the continuous output sync (S3 only); True when a loop was started."""
    if not job.continuous_output_sync or job.output is None:
        return False
    target = job.output.chosen
    if isinstance(target, HTTPData):
        out.line('echo "Continuous output sync is not available with HTTP: the output is sent at the end."')
        return False
    if not isinstance(target, S3Data):
        return False
    credentials = _s3_credentials(out, target, "s3-output")
    with out.block("grid_sync_loop() {", "}"):
        out.line("set +e")
        with out.block("while true; do", "done"):
            out.line(f"{_s3_sync(target, credentials)} >/dev/null 2>&1")
            out.line("sleep 5")
    out.line("set -m")
    out.line("grid_sync_loop &")
    out.line("grid_sync_pid=$!")
    out.line("set +m")
    out.line('grid_background+=("$grid_sync_pid")')
    return True


def _s3_sync(s3: S3Data, credentials: str) -> str:
    delete = " --delete" if s3.delete_sync else ""
    target = f"s3://{s3.bucket}/{s3.key}"
    return f'grid_s3 {credentials} s3 sync{delete} {_s3_common(s3)} "$DEEPSQUARE_OUTPUT/" {quote(target)}'


def render_output(out: ScriptBuilder, job: Job, sync_started: bool) -> None:
    """Push $DEEPSQUARE_OUTPUT after the steps; a failed push fails the job with a clear message."""
    if sync_started:
        out.line('kill -s TERM -- "-$grid_sync_pid" 2>/dev/null || true')
        out.line('wait "$grid_sync_pid" 2>/dev/null || true')
    target = job.output.chosen if job.output else None
    if isinstance(target, HTTPData):
        out.line('grid_list Output "$DEEPSQUARE_OUTPUT"')
        out.line('cd -- "$STORAGE_PATH"')
        out.line('if [ "$(find output/ -type f | wc -l)" -eq 1 ]; then')
        out.line('  grid_upload="$(find output/ -type f)"')
        out.line("else")
        out.line("  zip -q -r output.zip output/")
        out.line("  grid_upload=output.zip")
        out.line("fi")
        command = _http_upload(out, target.url, "$grid_upload")
        with out.block(f'if ! grid_answer="$({command})"; then', "fi"):
            out.line("printf 'output: the upload failed: %s\\n' \"$grid_answer\" >&2")
            out.line("exit 1")
        out.line('echo "##############################################################"')
        out.line("echo")
        out.line('echo "Click on this link to download your results:"')
        out.line('grid_urldecode "$grid_answer"')
        out.line("echo")
        out.line('echo "##############################################################"')
    elif isinstance(target, S3Data):
        out.line('grid_list Output "$DEEPSQUARE_OUTPUT"')
        credentials = '"$STORAGE_PATH/.grid/s3-output.credentials"'
        if not sync_started:
            credentials = _s3_credentials(out, target, "s3-output")
        with out.block(f"if ! {_s3_sync(target, credentials)}; then", "fi"):
            out.line("echo 'output: the upload to S3 failed' >&2")
            out.line("exit 1")
