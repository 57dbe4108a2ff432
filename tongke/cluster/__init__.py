"""Beyond one process: media workers per core and nodes coordinated through Redis.

A *media node* is a process that hosts rooms (their signalling, PeerConnections, ICE
ports). `tongke serve --workers N` runs N of them behind a *front* that serves pages and
APIs and routes each room's signalling to the node hosting it; with a `redis_url`, the
fronts and nodes of several hosts share one registry and one placement (docs/ARCHITECTURE.md).
"""
