"""Who may call: HTTP basic auth on every route but /health (when BASIC_AUTH_USER is set), and
Label Studio's X-Webhook-Secret on /webhook (when WEBHOOK_SECRET is set). Both are checked
before a request body is read or validated."""

from __future__ import annotations

import hmac

from flask import Flask, Response, jsonify, request

from .settings import Settings

OPEN_ENDPOINTS = {"/health"}
BASIC_AUTH = [{"basicAuth": []}]  # the OpenAPI security requirement of every route but /health


def _same(given: str, expected: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (a 500 for "Basic <b64 of é:x>").
    return hmac.compare_digest(given.encode(), expected.encode())


def _basic_auth_refusal(settings: Settings) -> Response | None:
    if not settings.basic_auth_user or request.path in OPEN_ENDPOINTS:
        return None
    auth = request.authorization
    user_ok = _same((auth.username if auth else "") or "", settings.basic_auth_user)
    pass_ok = _same((auth.password if auth else "") or "", settings.basic_auth_pass)
    if auth is not None and user_ok and pass_ok:
        return None
    return Response(
        '{"error": "authentication required"}\n',
        401,
        {"WWW-Authenticate": 'Basic realm="al-backend"'},
        mimetype="application/json",
    )


def _webhook_secret_refusal(settings: Settings):
    if request.path != "/webhook" or not settings.webhook_secret:
        return None
    if _same(request.headers.get("X-Webhook-Secret", ""), settings.webhook_secret):
        return None
    return jsonify(error="missing or wrong X-Webhook-Secret header (WEBHOOK_SECRET is set)"), 401


def register(app: Flask, settings: Settings) -> None:
    app.before_request(lambda: _basic_auth_refusal(settings) or _webhook_secret_refusal(settings))
