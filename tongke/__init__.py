"""Tongke: live, synchronized 1+N classrooms."""

__version__ = "0.1.0"
