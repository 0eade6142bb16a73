"""``python -m livedesk.chat``: run one chat pod."""

from __future__ import annotations

from livedesk.chat.service import main
from livedesk.platform.runtime import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(main, "chat"))
