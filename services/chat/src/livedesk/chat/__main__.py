"""``python -m livedesk.chat``: run one chat pod; ``... archive [--loop]``: the cold-data job."""

from __future__ import annotations

import sys

from livedesk.chat.service import main
from livedesk.platform.runtime import run_service

if __name__ == "__main__":
    if sys.argv[1:2] == ["archive"]:
        from livedesk.chat.archive_job import main as archive_main

        raise SystemExit(archive_main(sys.argv[2:]))
    raise SystemExit(run_service(main, "chat"))
