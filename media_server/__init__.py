"""The SFU: signalling, rooms, RTP forwarding without decoding, RTCP relaying."""
