"""What reaches a log line or an error message: no secret (tracebacks and exchanged access
tokens included), and no raw control character from a task's reference (log injection)."""

import io
import logging

from backend.images import redact_url
from backend.label_studio_auth import LabelStudioAuth
from backend.logging_setup import RedactSecrets

from ..conftest import SHAPES_CONFIG

CONTROL = ("\n", "\r", "\x1b", "\x00", "\u2028")


def capture(secrets: tuple[str, ...] = ()) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    log = logging.getLogger(f"test_log_safety.{id(out)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, out


def test_a_logged_traceback_is_scrubbed():
    log, out = capture(("hunter2-secret",))
    try:
        try:
            raise KeyError("inner hunter2-secret")
        except KeyError as inner:
            raise RuntimeError("the call with hunter2-secret failed") from inner
    except RuntimeError:
        log.exception("request failed")
    log.warning("with a stack", stack_info=True)  # hunter2-secret: the stack shows this line
    text = out.getvalue()
    assert "RuntimeError: the call with *** failed" in text and "KeyError: 'inner ***'" in text
    assert "Stack (most recent call last)" in text
    assert "hunter2-secret" not in text


def test_an_exchanged_access_token_never_reaches_a_log_line(image_server):
    """A personal access token is exchanged for short-lived access tokens at run time: none of
    them is among the configured secrets, yet each is scrubbed once obtained."""
    header = LabelStudioAuth(image_server.url, image_server.refresh_token)()
    assert header == {"Authorization": f"Bearer {image_server.access_token}"}
    log, out = capture()
    log.warning("calling Label Studio with %s", header)
    log.error(
        "an error quoting the token %s", image_server.access_token, exc_info=ValueError(image_server.access_token)
    )
    text = out.getvalue()
    assert text.count("***") == 3 and image_server.access_token not in text


def test_redact_url_escapes_control_characters_and_hides_credentials():
    assert redact_url("http://user:pw@h/a\nb\x1b[2J.png?sig=1") == "http://***@h/a\\nb\\x1b[2J.png?..."
    assert redact_url("/data/upload/1/x\r\nINFO forged.png") == "/data/upload/1/x\\r\\nINFO forged.png"


def test_control_characters_in_references_are_escaped_in_logs_and_errors(make_client, tmp_path, caplog):
    references = [
        "missing\nINFO forged: training finished\x1b[2J.png",  # a local path
        "http://example.com/a\nb.png",
        "/data/upload/1/x\r\nWARNING forged.png",
        "gopher://x/\u2028y",
        "http://[::1\n/x.png",
    ]
    client = make_client(local_files_root=str(tmp_path))
    tasks = [{"id": i, "data": {"picture": reference}} for i, reference in enumerate(references)]
    with caplog.at_level(logging.WARNING, logger="backend"):
        answer = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG})
    errors = [result["error"] for result in answer.get_json()["results"]]
    assert len(errors) == len(references)
    assert "no such file: missing\\nINFO forged: training finished\\x1b[2J.png" in errors[0]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= len(references)
    for text in [*errors, *lines]:
        assert not any(c in text for c in CONTROL), repr(text)
