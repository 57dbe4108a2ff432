"""Classroom agent."""
