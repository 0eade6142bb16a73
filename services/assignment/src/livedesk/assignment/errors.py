"""Errors of the assignment service, and their one mapping to gRPC status codes.

::

    AssignmentError
    ├── InvalidArgument      INVALID_ARGUMENT
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── FailedPrecondition   FAILED_PRECONDITION
    └── Unavailable          UNAVAILABLE (routing state being rebuilt, a dependency down)
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "AssignmentError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "Unavailable",
    "status_code_of",
]


class AssignmentError(Exception):
    """Root of the service's errors."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(AssignmentError):
    """The request is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AssignmentError):
    """A named conversation, agent or team does not exist (in this tenant)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AssignmentError):
    """The conversation is assigned to another agent."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AssignmentError):
    """The state does not allow the operation (resolved, offline, at capacity, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(AssignmentError):
    """Temporarily impossible; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE


def status_code_of(exc: AssignmentError) -> grpc.StatusCode:
    """The gRPC status code that reports ``exc``."""
    return exc.code
