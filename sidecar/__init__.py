"""The sidecar: an OpenAI-compatible proxy on localhost that ranks, falls back, measures, reports."""
