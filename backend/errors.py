"""Every error answer is JSON, {"error": "<what is wrong>"}, with the status that fits.

A refused request is counted in the metrics by kind; an unhandled exception is logged with its
traceback and answers a generic 500 (never the exception's text, which may hold a secret).
"""

from __future__ import annotations

import json
import logging
import re

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from exporters.label_config import LabelConfigError

from .metrics import Metrics

log = logging.getLogger(__name__)

# A \ud800-\udfff escape in the raw body: maybe a lone surrogate, which no text encoding (nor SQLite) takes.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_LISTED = 3  # validation problems named in one answer


class BadRequest(ValueError):
    """The request is wrong in a way the client can fix; the message says how."""


def describe(error: ValidationError) -> str:
    """A pydantic validation error as one line: where, then what (the first few problems)."""
    parts = []
    for problem in error.errors()[:MAX_LISTED]:
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}'")
        elif not where or (problem["type"] == "value_error" and f"'{problem['loc'][-1]}'" in message):
            parts.append(message)  # it names its field itself
        else:
            parts.append(f"'{where}': {message}")
    return "; ".join(parts)


def refuse_invalid(error: ValidationError):
    """flask-openapi3's validation_error_callback: a 400 in the house format."""
    raise BadRequest(describe(error))


def refuse_lone_surrogates() -> None:
    """Before any route: a JSON body with a lone surrogate (e.g. "\\ud800") is not text."""
    if not request.is_json or not SURROGATE_ESCAPE.search(request.get_data()):
        return
    body = request.get_json(silent=True)
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("the JSON body holds a lone surrogate (e.g. \\ud800), which is not text") from None


def register(app: Flask, metrics: Metrics) -> None:
    app.before_request(refuse_lone_surrogates)

    @app.errorhandler(BadRequest)
    @app.errorhandler(LabelConfigError)
    def bad_request(error: ValueError):
        kind = "label_config" if isinstance(error, LabelConfigError) else "bad_request"
        metrics.errors.labels(kind=kind).inc()
        return jsonify(error=str(error)), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = "the request body is too large" if error.code == 413 else error.description
        return jsonify(error=message), error.code

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        log.exception("unhandled error on %s", request.path)
        metrics.errors.labels(kind="internal").inc()
        return jsonify(error="internal error; see the backend's log"), 500
