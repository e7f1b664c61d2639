"""The dashboard's one lock: a bearer token, required when it listens beyond this machine.

A client shows the token as ``Authorization: Bearer TOKEN`` (Prometheus's ``authorization``
setting), or opens ``/?token=TOKEN`` once in a browser, which sets an HttpOnly cookie and redirects
to the same page without the token in its address. Tokens are compared in constant time and never
logged (the dashboard turns uvicorn's access log off, since it would print query strings).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import URL, QueryParams
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "fedmq_dashboard_token"


class TokenMiddleware:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        url = URL(scope=scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        offered = QueryParams(scope.get("query_string", b"")).get("token")
        if offered is not None:
            if self._matches(offered):
                response = RedirectResponse(str(url.remove_query_params("token")), status_code=303)
                response.set_cookie(COOKIE, offered, httponly=True, samesite="strict", secure=url.scheme == "https")
                await response(scope, receive, send)
                return
        elif self._matches(_bearer(headers.get("authorization", ""))) or self._matches(_cookie(headers.get("cookie", ""))):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse("a token is needed: open /?token=TOKEN, or send Authorization: Bearer TOKEN\n",
                                     status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _matches(self, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(offered.encode(), self.token)


def _bearer(value: str) -> str | None:
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def _cookie(value: str) -> str | None:
    for part in value.split(";"):
        name, _, content = part.strip().partition("=")
        if name == COOKIE:
            return content
    return None
