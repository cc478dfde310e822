"""Building the binding to libslurm's submission call, against the site's own slurm.h.

libslurm's structures change between Slurm releases, so the binding is compiled (cffi's API mode)
against the headers of the release the login node runs: the compiler checks every field this module
names. It is built once per installation (`grid-supervisor build-libslurm`, run by the install and
bootstrap scripts); without it the daemon submits with sbatch.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cffi

#: The compiled module's import name.
MODULE_NAME = "_grid_libslurm"
#: Where Debian's and Ubuntu's packages keep libslurmfull (the library every Slurm command links).
DEFAULT_LIBRARY_DIR = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm")
DEFAULT_INCLUDE_DIR = Path("/usr/include")

# Only what submission needs; "..." lets the compiler place each field where this release has it.
_DECLARATIONS = """
#define MEM_PER_CPU ...
typedef int... time_t;

typedef struct job_descriptor {
    char *account;
    char *comment;
    uint16_t cpus_per_task;
    char **environment;
    uint32_t env_size;
    char *features;
    uint32_t group_id;
    uint32_t min_cpus;
    char *name;
    uint32_t num_tasks;
    char *partition;
    uint64_t pn_min_memory;
    char *qos;
    char *reservation;
    char *script;
    char *std_out;
    char *submit_line;
    uint32_t time_limit;
    char *tres_per_job;
    uint32_t user_id;
    char *work_dir;
    ...;
} job_desc_msg_t;

typedef struct submit_response_msg {
    uint32_t job_id;
    ...;
} submit_response_msg_t;

typedef struct {
    char *propagate_rlimits;
    char *propagate_rlimits_except;
    ...;
} slurm_conf_t;

void slurm_init(const char *conf);
int slurm_load_ctl_conf(time_t update_time, slurm_conf_t **slurm_ctl_conf_ptr);
void slurm_free_ctl_conf(slurm_conf_t *slurm_ctl_conf_ptr);
void slurm_init_job_desc_msg(job_desc_msg_t *job_desc_msg);
int slurm_submit_batch_job(job_desc_msg_t *job_desc_msg, submit_response_msg_t **slurm_alloc_msg);
void slurm_free_submit_response_response_msg(submit_response_msg_t *msg);
int slurm_get_errno(void);
char *slurm_strerror(int errnum);
long slurm_api_version(void);
long grid_built_api_version(void);
const char *grid_library_path(void);
const char *grid_binding_revision(void);
"""
#: Which declarations a built binding holds: one built by another release of this package is rebuilt.
BINDING_REVISION = hashlib.sha256(_DECLARATIONS.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuiltBinding:
    path: Path
    #: libslurm's API version at build time (the binding refuses to run on another).
    api_version: int


def build(
    into: Path | None = None,
    *,
    include_dir: Path = DEFAULT_INCLUDE_DIR,
    library_dir: Path = DEFAULT_LIBRARY_DIR,
) -> BuiltBinding:
    """Compile the binding into `into` (default: this Python's site-packages) and return its path.

    Raises cffi's VerificationError (or OSError) with the compiler's message when the headers, the
    library or a compiler are missing."""
    header = include_dir / "slurm" / "slurm.h"
    if not header.is_file():
        raise FileNotFoundError(f"{header} not found: install Slurm's development headers (libslurm-dev)")
    library = library_dir / "libslurmfull.so"
    if not library.is_file():
        raise FileNotFoundError(f"{library} not found: the binding links Slurm's libslurmfull")
    if not str(library).isascii():
        raise ValueError(f"{library}: the library path must be ASCII")
    target = into if into is not None else Path(sysconfig.get_paths()["platlib"])
    ffi = cffi.FFI()
    ffi.cdef(_DECLARATIONS)
    api_version = int(ctypes.CDLL(str(library)).slurm_api_version())
    ffi.set_source(
        MODULE_NAME,
        "#include <slurm/slurm.h>\n#include <slurm/slurm_errno.h>\n"
        f"long grid_built_api_version(void) {{ return {api_version}L; }}\n"
        f"const char *grid_library_path(void) {{ return {json.dumps(str(library))}; }}\n"
        f'const char *grid_binding_revision(void) {{ return "{BINDING_REVISION}"; }}\n',
        include_dirs=[str(include_dir)],
        libraries=["slurmfull"],
        library_dirs=[str(library_dir)],
        runtime_library_dirs=[str(library_dir)],
    )
    with tempfile.TemporaryDirectory(prefix="grid-libslurm-") as work:
        built = Path(ffi.compile(tmpdir=work))
        target.mkdir(parents=True, exist_ok=True)
        destination = target / built.name
        staged = destination.with_suffix(".new")
        shutil.copyfile(built, staged)
        staged.replace(destination)  # one rename: a running daemon keeps the file it mapped
    return BuiltBinding(destination, api_version)
