"""How long a lesson WebSocket may go unanswered before either end gives up on it.

Each end pings every `HEARTBEAT_S`; aiohttp closes the socket when no pong has come
within half of that. The socket crosses the teaching point's line: on 256 kbit/s with
10 % loss, TCP's retransmission timeout there was 3-6 s (`ss -ti` in the point's
namespace during bench/rural.py), so one lost ping or pong and its resend outlast the
5 s a 10 s heartbeat allowed, and the point agent rejoined twice a minute, each time
losing its pictures for seconds. Half of 30 s covers a lost segment and its resend at
that timeout. A peer that really vanished is noticed sooner on the media path: ICE
consent (tongke.rtc_internals) and the agent's media watchdog end the session there.
"""

HEARTBEAT_S = 30.0
