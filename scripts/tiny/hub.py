"""A small stand-in for the Hugging Face Hub on localhost, for tests of the download path.

Serves model repositories made offline (by scripts/tiny/) from plain folders, each
as one commit, and is reached the way users reach the Hub: `HF_ENDPOINT=http://127.0.0.1:PORT`.
It answers exactly the routes that huggingface_hub 2.4 (pinned in constraints.txt) uses in
`snapshot_download`, `hf_hub_download` and `HfApi.model_info`:

    GET  /api/models/{org}/{name}                      model info (siblings, sha, gated)
    GET  /api/models/{org}/{name}/revision/{revision}  the same at a branch or commit
    GET  /api/models/{org}/{name}/tree/{revision}      the file list (`recursive` honoured: all files)
    HEAD /{org}/{name}/resolve/{revision}/{path}       X-Repo-Commit, ETag, Content-Length
    GET  /{org}/{name}/resolve/{revision}/{path}       the file itself

Errors are those of the Hub, with the `X-Error-Code` header huggingface_hub turns into its
exceptions: 404 `RepoNotFound` for an unknown repository, 404 `RevisionNotFound` for a
revision it does not have, 404 `EntryNotFound` for a missing file, and for a gated
repository 401 `GatedRepo` on a file without a token (403 with a wrong one). As on the Hub,
a gated repository's info and file list are public; its files are not. No `X-Xet-*` header
is ever sent, so huggingface_hub downloads plainly over HTTP and never takes its xet path.

The one token that opens gated repositories is given by the caller (tests make a random one
at run time): never write one into a file.

    python -m scripts.tiny.hub --repo ORG/NAME=FOLDER [--gated ORG/NAME ...] [--port 8090]
        (the token, if any, is read from $LOCAL_HUB_TOKEN)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

DEFAULT_BRANCH = "main"


@dataclass
class Repo:
    """One model repository: the files of a folder as a single commit on `main`."""

    folder: Path
    gated: bool = False
    files: dict[str, Path] = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.files = {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*")) if p.is_file()}
        if not self.files:
            raise ValueError(f"{self.folder}: no files to serve")
        digest = hashlib.sha1()
        for name, path in self.files.items():
            digest.update(name.encode() + b"\0" + file_sha256(path).encode() + b"\0")
        self.sha = digest.hexdigest()  # the commit: a 40-hex hash of the whole content

    def commit_for(self, revision: str) -> str | None:
        return self.sha if revision in (DEFAULT_BRANCH, self.sha) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": message}, status, headers={"X-Error-Code": code, "X-Error-Message": message})


class LocalHub:
    """The Starlette app over a set of repositories; `token` opens the gated ones."""

    def __init__(self, repos: dict[str, Repo], token: str | None = None):
        self.repos, self.token = repos, token
        model = "/{org}/{name}"
        self.app = Starlette(routes=[
            Route(f"/api/models{model}", self.model_info),
            Route(f"/api/models{model}/revision/{{revision}}", self.model_info),
            Route(f"/api/models{model}/tree/{{revision}}", self.tree),
            Route(f"/api/models{model}/tree/{{revision}}/{{path:path}}", self.tree),
            Route(f"{model}/resolve/{{revision}}/{{path:path}}", self.resolve, methods=["GET", "HEAD"]),
        ])

    def find(self, request: Request) -> tuple[str, Repo, str] | Response:
        """(repo id, repo, commit) of the request, or the Hub's error for it."""
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return hub_error(404, "RepoNotFound", f"Repository {repo_id} not found")
        revision = request.path_params.get("revision", DEFAULT_BRANCH)
        commit = repo.commit_for(revision)
        if commit is None:
            return hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo_id, repo, commit

    def access_error(self, request: Request, repo_id: str, repo: Repo) -> Response | None:
        if not repo.gated:
            return None
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not sent:
            return hub_error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated to access it.")
        if self.token is None or sent != self.token:
            return hub_error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list.")
        return None

    async def model_info(self, request: Request) -> Response:
        found = self.find(request)
        if isinstance(found, Response):
            return found
        repo_id, repo, commit = found
        siblings = [{"rfilename": name, "size": path.stat().st_size} for name, path in repo.files.items()]
        return JSONResponse({
            "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
            "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings,
        })

    async def tree(self, request: Request) -> Response:
        found = self.find(request)
        if isinstance(found, Response):
            return found
        _, repo, _ = found
        prefix = request.path_params.get("path", "").strip("/")
        entries = [
            {"type": "file", "path": name, "size": path.stat().st_size, "oid": file_sha256(path)[:40]}
            for name, path in repo.files.items()
            if not prefix or name.startswith(prefix + "/")
        ]
        return JSONResponse(entries)

    async def resolve(self, request: Request) -> Response:
        found = self.find(request)
        if isinstance(found, Response):
            return found
        repo_id, repo, commit = found
        if denied := self.access_error(request, repo_id, repo):
            return denied
        path = repo.files.get(request.path_params["path"])
        if path is None:
            return hub_error(404, "EntryNotFound", f"{request.path_params['path']} does not exist at {commit}")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{file_sha256(path)}"', "Content-Length": str(path.stat().st_size)}
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        return FileResponse(path, headers=headers, media_type="application/octet-stream")


@contextlib.contextmanager
def serve_in_thread(hub: LocalHub, port: int = 0) -> t.Iterator[str]:
    """Serve the hub on 127.0.0.1 in a daemon thread; yield its URL (for HF_ENDPOINT)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(hub.app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local Hub did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", required=True, metavar="ORG/NAME=FOLDER", help="serve FOLDER as ORG/NAME")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME", help="files need $LOCAL_HUB_TOKEN")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    repos = {}
    for spec in args.repo:
        repo_id, sep, folder = spec.partition("=")
        if not sep or repo_id.count("/") != 1:
            parser.error(f"--repo {spec!r}: expected ORG/NAME=FOLDER")
        repos[repo_id] = Repo(Path(folder), gated=repo_id in args.gated)
        print(f"{repo_id} at commit {repos[repo_id].sha}{' (gated)' if repos[repo_id].gated else ''}")
    hub = LocalHub(repos, token=os.environ.get("LOCAL_HUB_TOKEN"))
    print(f"export HF_ENDPOINT=http://127.0.0.1:{args.port}")
    uvicorn.run(hub.app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
