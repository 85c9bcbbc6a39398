"""A Hugging Face Hub stand-in for `huggingface_hub.snapshot_download` (huggingface_hub 2.4.0), reached via HF_ENDPOINT.

It implements exactly the endpoints snapshot_download calls for a model repo:
  GET  /api/models/{repo}/revision/{rev}   repo info: the commit sha a branch/tag resolves to
  GET  /api/models/{repo}/tree/{commit}    recursive file listing (blob ids, sizes, LFS sha256)
  HEAD /{repo}/resolve/{commit}/{path}     file metadata: X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{commit}/{path}     the file itself (with Range support)
with the Hub's error headers (X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound). A repo may be
private: it then answers 401 unless `Authorization: Bearer <token>` carries its token, as the Hub does.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import LocalServer, Recorded, Reply

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".h5", ".onnx", ".msgpack")
INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class HubRepo:
    """revisions: branch or tag name -> {path in repo: content}; each revision is one commit."""

    revisions: dict[str, dict[str, bytes]]
    token: str | None = None  # private repo: requests need this bearer token
    commits: dict[str, str] = field(init=False)  # commit sha -> revision name

    def __post_init__(self) -> None:
        self.commits = {}
        for name, files in self.revisions.items():
            digest = hashlib.sha1(name.encode())
            for path in sorted(files):
                digest.update(path.encode() + hashlib.sha1(files[path]).digest())
            self.commits[digest.hexdigest()] = name

    def commit_of(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return next((sha for sha, name in self.commits.items() if name == revision), None)

    def files_at(self, commit: str) -> dict[str, bytes]:
        return self.revisions[self.commits[commit]]


def repo_from_directory(directory: Path, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """{path: content} of every file under `directory` (one revision), plus `extra` files."""
    files = {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
             if path.is_file()}
    files.update(extra or {})
    return files


def resolved_path(request: Recorded) -> str | None:
    """The file path of a .../resolve/{rev}/{path} request, else None."""
    match = RESOLVE.match(unquote(urlsplit(request.path).path))
    return match["path"] if match else None


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def _etag(path: str, content: bytes) -> str:
    if _is_lfs(path):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _error(status: int, code: str, message: str) -> Reply:
    body = json.dumps({"error": message}).encode()
    return Reply(status, body, (("Content-Type", "application/json"), ("X-Error-Code", code),
                                ("X-Error-Message", message)))


def _json(data: object, *headers: tuple[str, str]) -> Reply:
    return Reply(200, json.dumps(data).encode(), (("Content-Type", "application/json"), *headers))


class FakeHub:
    """`with FakeHub({"user/name": HubRepo(...)}) as hub:` then set HF_ENDPOINT=hub.url."""

    def __init__(self, repos: dict[str, HubRepo]) -> None:
        self.repos = repos
        self._server = LocalServer(self._handle)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> list[Recorded]:
        return self._server.requests

    def __enter__(self) -> "FakeHub":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def _handle(self, request: Recorded) -> Reply:
        url = urlsplit(request.path)
        path = unquote(url.path)
        for pattern, answer in ((INFO, self._info), (TREE, self._tree), (RESOLVE, self._resolve)):
            match = pattern.match(path)
            if match:
                repo = self.repos.get(match["repo"])
                if repo is None:
                    return _error(404, "RepoNotFound", "Repository not found")
                if repo.token and request.headers.get("authorization") != f"Bearer {repo.token}":
                    return _error(401, "RepoNotFound", "Repository not found")  # what the Hub says to strangers
                commit = repo.commit_of(match["rev"])
                if commit is None:
                    return _error(404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
                return answer(match, repo, commit, request)
        return _error(404, "EntryNotFound", f"no such endpoint: {path}")

    def _info(self, match: re.Match, repo: HubRepo, commit: str, request: Recorded) -> Reply:
        files = repo.files_at(commit)
        return _json({
            "_id": commit[:24], "id": match["repo"], "modelId": match["repo"], "sha": commit,
            "private": repo.token is not None, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": ["transformers"], "library_name": "transformers", "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in sorted(files)],
        })

    def _tree(self, match: re.Match, repo: HubRepo, commit: str, request: Recorded) -> Reply:
        prefix = (match["path"] or "").strip("/")
        entries, folders = [], set()
        for name, content in sorted(repo.files_at(commit).items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            parts = name.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "oid": _etag(name, content) if not _is_lfs(name) else
                     hashlib.sha1(content).hexdigest(), "size": len(content), "path": name}
            if _is_lfs(name):
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders) if not prefix or f.startswith(prefix + "/")]
        return _json(entries)

    def _resolve(self, match: re.Match, repo: HubRepo, commit: str, request: Recorded) -> Reply:
        name = match["path"]
        content = repo.files_at(commit).get(name)
        if content is None:
            return _error(404, "EntryNotFound", f"{name} does not exist at {commit}")
        headers = [("X-Repo-Commit", commit), ("ETag", f'"{_etag(name, content)}"'),
                   ("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
        if _is_lfs(name):
            headers.append(("X-Linked-Etag", f'"{_etag(name, content)}"'))
            headers.append(("X-Linked-Size", str(len(content))))
        byte_range = re.match(r"bytes=(\d+)-(\d*)$", request.headers.get("range", ""))
        if byte_range and request.method == "GET":
            start = int(byte_range[1])
            end = int(byte_range[2]) + 1 if byte_range[2] else len(content)
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(content)}"))
            return Reply(206, content[start:end], tuple(headers))
        return Reply(200, content, tuple(headers))
