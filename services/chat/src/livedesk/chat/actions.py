"""What callers can do to conversations, shared by the REST API and the WebSocket.

Each action checks access, changes the store (state and event commit
together), then fans the change out to connected sockets.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from livedesk.chat.access import Principal, check_post, check_view
from livedesk.chat.archive import ArchiveReader
from livedesk.chat.archive_store import ObjectMissing
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.errors import Conflict, Forbidden, Invalid, Unavailable
from livedesk.chat.fanout import Hub, conversation_channel, staff_channels
from livedesk.chat.frames import conversation_notice, dumps, message_frame
from livedesk.chat.models import Conversation, Message, SenderKind

__all__ = ["ChatActions"]


def _not_archived(conversation: Conversation) -> None:
    if conversation.archived_at is not None:
        raise Conflict("conversation is archived and cannot be reopened; start a new one")


class ChatActions:
    """Conversation use cases for an authenticated principal."""

    def __init__(
        self,
        conversations: ConversationStore,
        directory: Directory,
        hub: Hub,
        max_message_chars: int,
        *,
        archive: ArchiveReader | None = None,
    ) -> None:
        self.conversations = conversations
        self.directory = directory
        self.hub = hub
        self.max_message_chars = max_message_chars
        self.archive = archive

    async def team_ids(self, principal: Principal) -> list[uuid.UUID]:
        """The principal's teams (empty for visitors and admins, who do not need them)."""
        if principal.role != "agent":
            return []
        return await self.directory.team_ids_of(principal.tenant_id, principal.subject_id)

    async def visible(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        team_ids: Sequence[uuid.UUID] | None = None,
        *,
        replica_ok: bool = False,
    ) -> Conversation:
        """The conversation, if the principal may see it (NotFound otherwise).

        ``replica_ok``: for read-only use (may come from a read replica).
        """
        conversation = await self.conversations.get(
            principal.tenant_id, conversation_id, replica_ok=replica_ok
        )
        if team_ids is None:
            team_ids = await self.team_ids(principal)
        check_view(principal, conversation, team_ids)
        return conversation

    async def history_after(
        self, conversation: Conversation, after_seq: int, limit: int, *, known_seq: int = 0
    ) -> list[Message]:
        """Messages after ``after_seq``, oldest first: from the store, or the archive."""
        if conversation.archived_at is None:
            return await self.conversations.messages_after(
                conversation.id, after_seq, limit, known_seq=known_seq
            )
        return ArchiveReader.after(await self._archived(conversation), after_seq, limit)

    async def history_before(
        self, conversation: Conversation, before_seq: int, limit: int
    ) -> list[Message]:
        """Messages just before ``before_seq``, oldest first: from the store, or the archive."""
        if conversation.archived_at is None:
            return await self.conversations.messages_before(conversation.id, before_seq, limit)
        return ArchiveReader.before(await self._archived(conversation), before_seq, limit)

    async def _archived(self, conversation: Conversation) -> list[Message]:
        if self.archive is None:
            raise Unavailable("this conversation is archived and the archive is not configured")
        try:
            try:
                return await self.archive.messages(conversation)
            except ObjectMissing:
                # An erasure or retention run rewrote its archive object meanwhile:
                # the row (primary) now names the new one.
                fresh = await self.conversations.get(conversation.tenant_id, conversation.id)
                return await self.archive.messages(fresh)
        except (ObjectMissing, OSError) as exc:
            # Missing twice, or a failing disk or S3 endpoint: the history exists
            # but cannot be read now; a retryable 503 / WS error, never a 500.
            raise Unavailable("the archive does not answer; retry shortly") from exc

    async def open(self, principal: Principal, subject: str, priority: int) -> Conversation:
        """A visitor opens a conversation in their inbox."""
        if principal.role != "visitor":
            raise Forbidden("conversations are opened by visitors")
        visitor = await self.directory.visitor(principal.tenant_id, principal.subject_id)
        inbox = await self.directory.inbox(principal.tenant_id, visitor.inbox_id)
        conversation = await self.conversations.create(
            inbox, visitor.id, subject=subject, priority=priority
        )
        frame = conversation_notice("created", conversation)
        for channel in staff_channels(conversation.tenant_id, [conversation.team_id], []):
            await self.hub.publish(channel, frame)
        return conversation

    async def send(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        body: str,
        client_msg_id: str | None,
        team_ids: Sequence[uuid.UUID] | None = None,
        *,
        committed: Callable[[Message, bool], None] | None = None,
    ) -> tuple[Message, bool]:
        """Post a message; (message, created). Committed before this returns.

        The common case is one statement; only when it writes nothing (no such
        conversation, not allowed, resolved) is the conversation read to say why.
        ``committed`` is called once the message is durable, before it is fanned
        out (the WebSocket acks there, so the ack precedes the sender's own copy).
        """
        if not body.strip():
            raise Invalid("body is empty")
        if len(body) > self.max_message_chars:
            raise Invalid(f"body is longer than {self.max_message_chars} characters")
        kind: SenderKind = "visitor" if principal.role == "visitor" else "agent"
        appended = await self.conversations.append(
            tenant_id=principal.tenant_id,
            conversation_id=conversation_id,
            sender_kind=kind,
            sender_id=principal.subject_id,
            guard=principal.role,
            body=body,
            client_msg_id=client_msg_id,
            committed=committed,
        )
        if appended is None:
            conversation = await self.visible(principal, conversation_id, team_ids)
            check_post(principal, conversation)
            if conversation.status != "resolved" or principal.role != "visitor":
                raise Conflict("conversation is resolved")
            _not_archived(conversation)
            message, created, reopened = await self.conversations.reopen_and_append(
                conversation, principal.subject_id, body, client_msg_id
            )
            if committed is not None:
                committed(message, created)
            await self._announce("reopened", reopened)
        else:
            message, created = appended
        # A retried send is published again: the pod that committed the original
        # may have died before its publish, and then the last message of a quiet
        # conversation would reach nobody (no later seq reveals the gap). Clients
        # drop seqs they hold, so a second copy costs nothing.
        await self.hub.publish(conversation_channel(conversation_id), message_frame(message))
        return message, created

    async def resolve(self, principal: Principal, conversation_id: uuid.UUID) -> Conversation:
        """Close a conversation (its agent, an admin, or its visitor)."""
        conversation = await self.visible(principal, conversation_id)
        check_post(principal, conversation)
        resolved = await self.conversations.resolve(
            conversation, principal.subject_id, principal.role
        )
        await self._announce("resolved", resolved)
        return resolved

    async def reopen(self, principal: Principal, conversation_id: uuid.UUID) -> Conversation:
        """Queue a resolved conversation again."""
        conversation = await self.visible(principal, conversation_id)
        if principal.role == "agent" and conversation.agent_id != principal.subject_id:
            raise Forbidden("only the last agent, an admin or the visitor reopens")
        _not_archived(conversation)
        reopened = await self.conversations.reopen(
            conversation, principal.subject_id, principal.role
        )
        await self._announce("reopened", reopened)
        return reopened

    async def mark_read(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        seq: int,
        team_ids: Sequence[uuid.UUID] | None = None,
    ) -> int:
        """Advance the caller's read marker and tell the other participants."""
        conversation = await self.visible(principal, conversation_id, team_ids)
        stored = await self.conversations.mark_read(conversation, principal.subject_id, seq)
        await self.hub.publish(
            conversation_channel(conversation.id),
            dumps(
                {
                    "type": "read",
                    "conversation_id": str(conversation.id),
                    "reader_id": str(principal.subject_id),
                    "reader_kind": "visitor" if principal.role == "visitor" else "agent",
                    "seq": stored,
                }
            ),
        )
        return stored

    async def _announce(
        self,
        event: str,
        conversation: Conversation,
        *,
        also_agents: Sequence[uuid.UUID] = (),
        **extra: object,
    ) -> None:
        frame = conversation_notice(event, conversation, **extra)
        await self.hub.publish(conversation_channel(conversation.id), frame)
        agents = [a for a in (conversation.agent_id, *also_agents) if a is not None]
        for channel in staff_channels(conversation.tenant_id, [conversation.team_id], agents):
            await self.hub.publish(channel, frame)

    async def announce(
        self,
        event: str,
        conversation: Conversation,
        *,
        also_agents: Sequence[uuid.UUID] = (),
        **extra: object,
    ) -> None:
        """Tell the participants, and the consoles allowed to see it, of a change.

        ``also_agents``: agents who lose the conversation and must hear it go.
        """
        await self._announce(event, conversation, also_agents=also_agents, **extra)
