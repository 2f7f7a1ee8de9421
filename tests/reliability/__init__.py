"""Reliability and security suite (issue 7): load, memory, faults, bad input, privacy."""
