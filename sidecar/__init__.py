"""The sidecar: an OpenAI-compatible proxy on localhost.

It ranks, falls back, measures and reports every upstream attempt.
"""
