"""How long a lesson WebSocket may go unanswered before either end gives up on it.

Each end pings after `HEARTBEAT_S` without hearing anything from the other; aiohttp
closes the socket when nothing has come within half of that after the ping (aiohttp
has no separate setting for the pong's wait). The socket crosses the teaching point's
line: on 256 kbit/s with 10 % loss, TCP's retransmission timeout there was 3-6 s (`ss
-ti` in the point's namespace during bench/rural.py), and the same segment lost twice
(more likely while a start-up flood or a retest fills the modem's drop-tail queue)
waits 3-6 s, then twice that again. A 10 s heartbeat (a 5 s wait) made the point agent
rejoin twice a minute; 30 s (a 15 s wait) still did in 2 of 40 runs of
`bench/rural.py --condition 256kbit-10pct --receiver agent` ("No PONG received after
15.0 seconds", code 1006), each rejoin costing about 3 s of audio and a second start-up
flood that froze the pictures for 7-8 s. A 30 s wait covers a segment lost twice at a
6 s timeout. A peer that really vanished is noticed sooner on the media path: ICE
consent (tongke.rtc_internals) and the agent's media watchdog end the session there.

A reverse proxy in front of the server must keep an idle WebSocket open for longer than
this (nginx: `proxy_read_timeout` above its 60 s default; docs/deployment.md).
"""

HEARTBEAT_S = 60.0
