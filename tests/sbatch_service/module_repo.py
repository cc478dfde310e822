"""A local git repository of modules, made by the tests, so that `use` resolves offline.

It holds, as a module author would publish them: `module.yaml` (tagged `v1`, then changed on the
default branch), `heavy/module.yaml` and `nested/module.yaml` with the monorepo tags `heavy/v1`
and `nested/v1`, and `link/module.yaml`, a symlink out of the repository.
Dates and names are fixed, so commit hashes are the same on every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sbatch_service.modules import GitFetcher, ModuleSettings

HERE = Path(__file__).parent / "modules"
HOST, OWNER, REPO = "example.org", "grid", "modules"
SOURCE = f"{HOST}/{OWNER}/{REPO}"


def _git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "grid tests",
        "GIT_AUTHOR_EMAIL": "tests@example.org",
        "GIT_COMMITTER_NAME": "grid tests",
        "GIT_COMMITTER_EMAIL": "tests@example.org",
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def make_module_repo(root: Path) -> tuple[ModuleSettings, dict[str, str]]:
    """The settings that fetch from the repository under `root`, and its commits by name."""
    repo = root / HOST / OWNER / REPO
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    shutil.copy(HERE / "greeting.yaml", repo / "module.yaml")
    (repo / "heavy").mkdir()
    shutil.copy(HERE / "heavy.yaml", repo / "heavy" / "module.yaml")
    (repo / "nested").mkdir()
    shutil.copy(HERE / "nested.yaml", repo / "nested" / "module.yaml")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first version")
    _git(repo, "tag", "v1")
    _git(repo, "tag", "heavy/v1")
    _git(repo, "tag", "nested/v1")
    first = _git(repo, "rev-parse", "HEAD")
    shutil.copy(HERE / "greeting-v2.yaml", repo / "module.yaml")
    (repo / "link").mkdir()
    (repo / "link" / "module.yaml").symlink_to("/etc/passwd")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "second version")
    second = _git(repo, "rev-parse", "HEAD")
    settings = ModuleSettings(
        url_template=f"file://{root}/{{host}}/{{owner}}/{{repo}}", allowed_hosts=(HOST,)
    )
    return settings, {"first": first, "second": second}


def module_fetcher(root: Path) -> GitFetcher:
    return GitFetcher(make_module_repo(root)[0])
