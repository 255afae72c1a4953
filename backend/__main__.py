"""`python -m backend`: serve the app with gunicorn, one process (the model is loaded once)
and SERVER_THREADS request threads, on HOST:PORT. `python -m backend connect ...` registers
the backend with a Label Studio project (see backend/connect.py)."""

from __future__ import annotations

import sys

from gunicorn.app.base import BaseApplication

from .app import create_app
from .logging_setup import configure_logging
from .settings import Settings


class Server(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        self.cfg.set("bind", f"{s.host}:{s.port}")
        self.cfg.set("workers", 1)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", s.server_threads)
        # Label Studio waits up to 100 s for /predict; allow a little more before a worker is killed.
        self.cfg.set("timeout", 130)
        self.cfg.set("loglevel", s.log_level.lower())
        self.cfg.set("control_socket_disable", True)

    def load(self):
        configure_logging(self.settings.log_level, self.settings.secrets)
        return create_app(self.settings)


def main() -> None:
    if sys.argv[1:2] == ["connect"]:
        from .connect import main as connect_main

        sys.exit(connect_main(sys.argv[2:]))
    try:
        settings = Settings.load()
    except ValueError as error:  # a bad setting: one line naming it, not a traceback
        sys.exit(f"fdet-backend: {error}")
    configure_logging(settings.log_level, settings.secrets)
    Server(settings).run()


if __name__ == "__main__":
    main()
