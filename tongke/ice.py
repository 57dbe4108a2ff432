"""Which local addresses ICE offers as host candidates (see tongke.rtc_internals)."""

from tongke.rtc_internals import use_host_addresses

__all__ = ["use_host_addresses"]
