"""The lesson's classroom across a relay link: an edge's participants take part at the origin.

One owner: the origin's Classroom holds the phase, hands, chat, call-on, mute,
attendance and device reports for every member of the lesson, wherever it is connected.
An edge node forwards, on the link's control socket (docs/protocol.md, "Relay links"):

- each of its participants as a *member* of the origin's lesson (`member_joined`,
  `member_left`; all of them again whenever the link comes up, so a redialled or
  re-placed origin learns who is there);
- each classroom action of its participants (`member_action`, answered by
  `member_reply` with the origin's `done` or error);

and the origin sends each member what its Classroom would have sent a participant of
its own (`member_send`: one message for every member it is identical for). What a
participant's own node's router sends it (`receive_mode`, `watch_program`) stays with
that node. The classroom state the edge's receive policy reads (phase, called-on, muted)
is mirrored separately (`classroom`, media_server/relay.py).

Trust: the link is authenticated (media_server/relay.py), and the edge checked its
participants' tokens. The origin still refuses, logs and counts (the link's
`bad_messages`) a member naming another room's claims, an action from a member that has
not joined over this link, and anything malformed; none of it reaches the Classroom.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from media_server.classroom import ACTIONS, LOCAL_ACTIONS
from media_server.publisher import SignallingError
from media_server.relay_link import BadRelayMessage, RelayLink
from tongke.tokens import Claims, Role
from tongke.untrusted import display_text_problem

if TYPE_CHECKING:
    from media_server.participant import Participant
    from media_server.room import Room

log = logging.getLogger(__name__)

MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An action the origin has not answered in this long is answered "relay_unavailable".
REPLY_TIMEOUT_S = 5.0
# What an origin's Classroom sends a participant (and so a member).
DELIVERED = frozenset({"classroom", "chat", "agent_state"})
MEMBER_ROLES = frozenset(
    {Role.MASTER, Role.POINT, Role.AGENT, Role.OBSERVER, Role.RECORDER, Role.ADMIN, Role.TUTOR}
)
MAX_REQ = 1 << 53


def _member(message: dict[str, Any]) -> str:
    member = message.get("member")
    if not isinstance(member, str) or not MEMBER_RE.match(member):
        raise BadRelayMessage("member must match [A-Za-z0-9_.-]{1,64}")
    return member


def _text(raw: dict[str, Any], key: str, *, empty: bool = True) -> str:
    value = raw.get(key, "")
    if value == "" and empty:
        return ""
    problem = display_text_problem(value, max_chars=128)
    if problem is not None:
        raise BadRelayMessage(f"{key} {problem}")
    return str(value)


def claims_of(participant: Participant) -> dict[str, Any]:
    c = participant.claims
    return {"classroom": c.classroom, "role": c.role.value, "subject": c.subject}


# -- the origin's side ---------------------------------------------------------------------


class RemoteMember:
    """An edge's participant as the origin's Classroom sees it: what the Classroom and
    the Director read of a Participant (id, claims, name, send_json)."""

    def __init__(self, members: OriginMembers, member: str, claims: Claims, name: str) -> None:
        self.id = f"{members.link.peer_node}~{member}"
        self.member = member
        self.claims = claims
        self.name = name
        self._members = members

    async def send_json(self, message: dict[str, Any]) -> None:
        self._members.deliver(self.member, message)


class OriginMembers:
    """One link's members of the lesson, at the origin."""

    def __init__(self, link: RelayLink, room: Room) -> None:
        self.link = link
        self.room = room
        self.members: dict[str, RemoteMember] = {}
        # Identical messages to several members within one loop turn go as one.
        self._outgoing: dict[str, tuple[dict[str, Any], list[str]]] = {}
        self._flush_soon = False

    async def handle(self, message: dict[str, Any]) -> None:
        """A control message the link itself does not handle (its `on_message`)."""
        kind = message.get("type")
        if kind == "member_joined":
            await self._joined(message)
        elif kind == "member_left":
            member = self.members.pop(_member(message), None)
            if member is not None:
                await self.room.classroom.remove_member(member)  # type: ignore[arg-type]
        elif kind == "member_action":
            await self._action(message)
        else:
            raise BadRelayMessage(f"unknown message type {kind!r}")

    async def _joined(self, message: dict[str, Any]) -> None:
        member = _member(message)
        raw = message.get("claims")
        if not isinstance(raw, dict):
            raise BadRelayMessage("member_joined.claims must be an object")
        role = raw.get("role")
        if role not in {r.value for r in MEMBER_ROLES}:
            raise BadRelayMessage("claims.role must be a role that joins lessons")
        claims = Claims(
            room=self.room.id,
            classroom=_text(raw, "classroom"),
            role=Role(role),
            subject=_text(raw, "subject"),
            name="",
            expires_at=0,
        )
        name = _text(message, "name", empty=False)
        classroom = self.room.classroom
        old = self.members.pop(member, None)
        if old is not None:  # joined again (the edge re-announces on every new link)
            await classroom.remove_member(old)  # type: ignore[arg-type]
        joined = self.members[member] = RemoteMember(self, member, claims, name)
        await classroom.add_member(joined)  # type: ignore[arg-type]

    async def _action(self, message: dict[str, Any]) -> None:
        req = message.get("req")
        if isinstance(req, bool) or not isinstance(req, int) or not 0 < req < MAX_REQ:
            raise BadRelayMessage("member_action.req must be a positive integer")
        member = self.members.get(_member(message))
        action = message.get("message")
        try:
            if member is None:
                # A sender that has not joined over this link: refused, logged, counted.
                raise BadRelayMessage(f"member {message['member']!r} is not on this link")
            if not isinstance(action, dict) or action.get("type") not in ACTIONS:
                raise BadRelayMessage("member_action.message must be a classroom action")
            kind = str(action["type"])
            if kind in LOCAL_ACTIONS:
                raise BadRelayMessage(f"{kind} is answered by the member's own node")
        except BadRelayMessage as exc:
            self._reply(req, error={"code": "bad_request", "message": str(exc)})
            raise
        try:
            reply = await ACTIONS[kind](self.room.classroom, member, action)  # type: ignore[arg-type]
        except SignallingError as exc:
            self._reply(req, error={"code": exc.code, "message": exc.message})
        else:
            self._reply(req, reply=reply)

    def _reply(self, req: int, **answer: Any) -> None:
        self.flush()  # what the action announced goes first, as it would to a participant
        self.link.post({"type": "member_reply", "req": req, **answer})

    def deliver(self, member: str, message: dict[str, Any]) -> None:
        text = json.dumps(message, sort_keys=True, ensure_ascii=False)
        entry = self._outgoing.get(text)
        if entry is None:
            self._outgoing[text] = (message, [member])
        else:
            entry[1].append(member)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        outgoing, self._outgoing = self._outgoing, {}
        for message, members in outgoing.values():
            self.link.post({"type": "member_send", "members": members, "message": message})

    async def close(self) -> None:
        """The link is gone: its members leave the lesson (they come back with the next)."""
        members, self.members = list(self.members.values()), {}
        for member in members:
            try:
                await self.room.classroom.remove_member(member)  # type: ignore[arg-type]
            except Exception:
                log.exception("relay %s: member %s leaving failed", self.link.link_id, member.id)


# -- the edge's side -----------------------------------------------------------------------


class EdgeClassroom:
    """An edge node's classroom upstream: its participants' part in the origin's lesson.

    Installed as the room's `Classroom.upstream` while this node is an edge for it; lives
    as long as that (across links: each new link hears every member again).
    """

    def __init__(self, room: Room) -> None:
        self.room = room
        self.link: RelayLink | None = None
        self._reqs = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # The origin's last classroom state per participant, for this node's own events.
        self._states: dict[str, dict[str, Any]] = {}

    # -- Classroom.upstream ----------------------------------------------------------------

    async def joined(self, participant: Participant) -> None:
        self._post_joined(participant)

    async def left(self, participant: Participant) -> None:
        self._states.pop(participant.id, None)
        if self.link is not None:
            self.link.post({"type": "member_left", "member": participant.id})

    async def action(self, who: Participant, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        link = self.link
        if link is None or link.closed:
            raise SignallingError(
                "relay_unavailable", "the lesson's origin server is out of reach; try again"
            )
        req = next(self._reqs)
        reply = self._replies[req] = asyncio.get_running_loop().create_future()
        forwarded = {k: v for k, v in message.items() if k != "id"}
        link.post({"type": "member_action", "req": req, "member": who.id, "message": forwarded})
        try:
            return await asyncio.wait_for(reply, REPLY_TIMEOUT_S)
        except TimeoutError:
            raise SignallingError(
                "relay_unavailable", f"the lesson's origin server did not answer {kind!r}"
            ) from None
        finally:
            self._replies.pop(req, None)

    def state_for(self, participant: Participant) -> dict[str, Any] | None:
        state = self._states.get(participant.id)
        return self._local_view(state) if state is not None else None

    # -- the link ----------------------------------------------------------------------------

    def attach(self, link: RelayLink) -> None:
        """A new link to the origin: every participant here is a member again."""
        self.link = link
        for p in list(self.room.participants.values()):
            self._post_joined(p)

    def detach(self, link: RelayLink) -> None:
        if self.link is not link:
            return
        self.link = None
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(
                    SignallingError("relay_unavailable", "the link to the lesson's origin broke")
                )

    async def handle(self, message: dict[str, Any]) -> bool:
        """The origin's member messages; False for any other type."""
        kind = message.get("type")
        if kind == "member_send":
            await self._deliver(message)
        elif kind == "member_reply":
            self._answer(message)
        else:
            return False
        return True

    async def _deliver(self, message: dict[str, Any]) -> None:
        members, body = message.get("members"), message.get("message")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise BadRelayMessage("member_send.members must be a list of member ids")
        if not isinstance(body, dict) or body.get("type") not in DELIVERED:
            raise BadRelayMessage("member_send.message must be a classroom, chat or device message")
        state = body.get("state") if body["type"] == "classroom" else None
        if state is not None and not isinstance(state, dict):
            raise BadRelayMessage("classroom.state must be an object")
        out = {**body, "state": self._local_view(state)} if state is not None else body
        for member in members:
            p = self.room.participants.get(member)
            if p is None:
                continue  # left meanwhile
            if state is not None:
                self._states[member] = state
            try:
                await p.send_json(out)
            except ConnectionError:
                pass

    def _answer(self, message: dict[str, Any]) -> None:
        req = message.get("req")
        reply = self._replies.get(req) if isinstance(req, int) else None
        if reply is None or reply.done():
            return  # answered after our timeout: the participant was told already
        error, answer = message.get("error"), message.get("reply")
        if isinstance(error, dict):
            reply.set_exception(
                SignallingError(str(error.get("code"))[:64], str(error.get("message"))[:500])
            )
        elif isinstance(answer, dict):
            reply.set_result(answer)
        else:
            reply.set_exception(SignallingError("relay_unavailable", "a malformed answer"))
            raise BadRelayMessage("member_reply needs 'reply' or 'error' objects")

    def _post_joined(self, participant: Participant) -> None:
        if self.link is None:
            return  # told when the link comes up (`attach`)
        self.link.post(
            {
                "type": "member_joined",
                "member": participant.id,
                "claims": claims_of(participant),
                "name": participant.name,
            }
        )

    def _local_view(self, state: dict[str, Any]) -> dict[str, Any]:
        """The origin's state, with what this node decides for its own points: which of
        them take the program alone (their links are measured here)."""
        director = state.get("director")
        if not isinstance(director, dict):
            return state
        here = self.room.director
        program_only = director.get("program_only")
        modes = director.get("receive_modes")
        return {
            **state,
            "director": {
                **director,
                "program_only": sorted(
                    set(program_only if isinstance(program_only, list) else []) | here.program_only
                ),
                "receive_modes": {
                    **(modes if isinstance(modes, dict) else {}),
                    **here.receive_modes,
                },
            },
        }

    def close(self) -> None:
        if self.link is not None:
            self.detach(self.link)
