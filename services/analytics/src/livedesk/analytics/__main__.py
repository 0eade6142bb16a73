"""``python -m livedesk.analytics``: run the analytics service until SIGTERM."""

from __future__ import annotations

from livedesk.analytics.service import SERVICE, main
from livedesk.platform.runtime import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(main, SERVICE))
