"""The chat page and the API-key check of a generated service.

Copied verbatim into every generated model folder from templates/web.py by
scripts/generate.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import FileResponse
from starlette.routing import Route

API_KEY_ENV = "VLLM_API_KEY"
# Health, metrics and the chat page (which asks for the key itself) stay open.
OPEN_PATHS = ("/livez", "/readyz", "/metrics", "/chat")
PAGE = Path(__file__).with_name("chat.html")


class APIKeyMiddleware:
    """With $VLLM_API_KEY set, every route but OPEN_PATHS needs `Authorization: Bearer <key>`.

    The key check is vLLM's own (hashed, constant-time); vLLM's middleware guards only /v1
    and answers a bare {"error": "Unauthorized"}, so this one guards BentoML's APIs too and
    answers an OpenAI error object. Unset, it passes everything through.
    """

    def __init__(self, app, env_name: str = API_KEY_ENV) -> None:
        self.app = app
        self.vllm_check = None
        if key := os.environ.get(env_name, ""):
            # Imported only when needed: vLLM's package takes seconds to import.
            from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

            self.vllm_check = AuthenticationMiddleware(app, tokens=[key])

    async def __call__(self, scope, receive, send) -> None:
        if (
            self.vllm_check is None
            or scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or scope["path"].startswith(OPEN_PATHS)
            or self.vllm_check.verify_token(Headers(scope=scope))
        ):
            await self.app(scope, receive, send)
            return
        body = {"error": {"message": "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                          "type": "AuthenticationError", "param": None, "code": 401}}
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _page(request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


# Mounted at "/" before vLLM's app: BentoML's mount matches only this app's own route.
chat_page = Starlette(routes=[Route("/chat", _page, methods=["GET", "HEAD"])])
