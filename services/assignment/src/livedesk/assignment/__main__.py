"""``python -m livedesk.assignment``: run one assignment engine replica."""

from __future__ import annotations

from livedesk.assignment.service import main
from livedesk.platform.runtime import run_service

if __name__ == "__main__":
    raise SystemExit(run_service(main, "assignment"))
