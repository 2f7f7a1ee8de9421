"""``budgetspan demo``: a support-ticket agent, run for real through the instrumented OpenAI SDK.

``server`` is an OpenAI-compatible model server on loopback (deterministic answers, realistic
usage and latency); ``agent`` is the agent; ``runner`` runs the tickets and prints the tables.
"""
