"""The typed client of livedesk.assignment.v1.AssignmentService, for other services.

Owned by the assignment team, kept apart from the service so that callers
(chat, tools) depend on the contract and this wrapper only, never on the engine.
"""

from __future__ import annotations

from livedesk.assignment_client.client import AssignmentClient

__all__ = ["AssignmentClient"]
