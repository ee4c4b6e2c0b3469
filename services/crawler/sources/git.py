"""A git repository (URL or local path) -> one code document per text file.

Files are listed by git itself (`git ls-files --cached --others --exclude-standard`), so
.gitignore is respected exactly as git reads it. Binaries, lock files, vendored folders and
files over the size cap are skipped.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from llm_twin.documents import RawDocument

from ..errors import FetchError, InvalidTarget
from ..guard import AddressGuard
from .base import CrawlContext, Item, LocalSource

LOCK_FILES = {
    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "uv.lock", "Pipfile.lock",
    "Cargo.lock", "go.sum", "composer.lock", "Gemfile.lock", "bun.lockb", "pdm.lock",
}
VENDORED_DIRS = {"vendor", "vendors", "node_modules", "third_party", "third-party", "dist", "build",
                 ".venv", "venv", "site-packages", "__pycache__", ".git"}
SKIPPED_PATTERNS = ("*.min.js", "*.min.css", "*.map", "*.lock", "*.pb.go", "*_pb2.py", "*_pb2_grpc.py")
GIT_TIMEOUT_S = 300


def is_remote(target: str) -> bool:
    return target.startswith(("http://", "https://", "git@", "ssh://", "git://"))


def web_link(repo_url: str, path: str) -> str:
    """A link a reader can open: the forge's blob page where we know the forge, else url#path."""
    parts = urlsplit(repo_url)
    base = repo_url.removesuffix(".git").rstrip("/")
    if parts.hostname in ("github.com", "gitlab.com", "codeberg.org"):
        return f"{base}/blob/HEAD/{path}"
    return f"{base}#{path}"


def looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


def skip_reason(path: str) -> str | None:
    p = PurePosixPath(path)
    if p.name in LOCK_FILES or any(fnmatch.fnmatch(p.name, pat) for pat in SKIPPED_PATTERNS):
        return "lock or generated file"
    if any(part in VENDORED_DIRS for part in p.parts[:-1]):
        return "vendored"
    if any(part.startswith(".") for part in p.parts):
        return "hidden (.gitignore, .github/...): configuration, not the author's writing"
    return None


def _git(args: list[str], cwd: Path | None, target: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never hang waiting for a password
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise FetchError(target, "the git program is not installed (apt-get install git)") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(target, f"git {args[0]} took over {GIT_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise FetchError(target, f"git {args[0]} failed: {done.stderr.strip().splitlines()[-1:] or ['?']}")
    return done.stdout


class GitSource(LocalSource):
    name = "git"
    summary = "a git repository: an https:// remote, or a local clone (CLI only)"
    over_api = True  # https remotes only (the gateway refuses the rest)

    @classmethod
    def build(cls, ctx: CrawlContext) -> GitSource:
        return cls(ctx.max_file_bytes, ctx.fetcher.guard, allow_insecure=ctx.allow_insecure_git)

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        if path is None:
            return target.endswith(".git") or target.startswith(("git@", "ssh://", "git://"))
        return path.is_dir() and (path / ".git").exists()

    def __init__(self, max_file_bytes: int = 512 * 1024, guard: AddressGuard | None = None,
                 allow_insecure: bool = False):
        self.max_file_bytes = max_file_bytes
        self.guard = guard or AddressGuard()
        # ssh://, git:// and git@ remotes reach hosts the address guard cannot pin, and http:// is
        # unauthenticated: only `twin crawl --allow-insecure-git` clones them.
        self.allow_insecure = allow_insecure

    def _pinning(self, target: str) -> list[str]:
        """git options that make an http(s) clone reach only the checked address, with no redirects,
        and only over http(s) (no submodule or redirect may switch to ssh, git or file)."""
        protocols = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always"]
        if not target.startswith("https://") and not self.allow_insecure:
            raise InvalidTarget(target, "git repositories are cloned over https:// only (`twin crawl "
                                        "--allow-insecure-git` for an http, ssh or git remote you trust)")
        if not target.startswith(("http://", "https://")):
            return []  # ssh/git remotes, allowed by the flag: the guard cannot pin them
        protocols += ["-c", "protocol.http.allow=always"] if self.allow_insecure else []
        destination = self.guard.check(target)
        address = f"[{destination.address}]" if ":" in destination.address else destination.address
        return [*protocols, "-c", "http.followRedirects=false",
                "-c", f"http.curloptResolve={destination.host}:{destination.port}:{address}"]

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        if is_remote(target):
            with tempfile.TemporaryDirectory(prefix="twin-git-") as tmp:
                checkout = Path(tmp) / "repo"
                pin = self._pinning(target)
                try:
                    _git([*pin, "clone", "--depth", "1", "--quiet", target, str(checkout)], None, target)
                except FetchError as exc:
                    if "shallow" not in exc.reason:
                        raise
                    # Servers speaking git's "dumb" HTTP protocol cannot serve shallow clones.
                    shutil.rmtree(checkout, ignore_errors=True)
                    _git([*pin, "clone", "--quiet", target, str(checkout)], None, target)
                yield from self._files(checkout, target, author, remote=True)
        else:
            path = Path(target).expanduser()
            if not (path / ".git").exists():
                raise InvalidTarget(target,
                                    "not a git repository (no .git folder); use --source folder for plain folders")
            yield from self._files(path.resolve(), str(path.resolve()), author, remote=False)

    def _files(self, root: Path, repo: str, author: str, remote: bool) -> Iterator[Item]:
        listing = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], root, repo)
        repo_name = PurePosixPath(urlsplit(repo).path if remote else repo).name.removesuffix(".git")
        for rel in sorted(filter(None, listing.split("\0"))):
            file = root / rel
            if skip_reason(rel) or not file.is_file() or file.is_symlink():
                continue
            if file.stat().st_size > self.max_file_bytes:
                continue
            data = file.read_bytes()
            if looks_binary(data):
                continue
            text = data.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            source = f"{repo}#{rel}"
            yield RawDocument.create(
                author=author, category="code", source=source,
                link=web_link(repo, rel) if remote else f"file://{file}",
                title=f"{repo_name}/{rel}", text=text,
                platform=urlsplit(repo).hostname if remote else "git",
            )
