"""A fake OpenAI-compatible LLM provider for the demo, the tests and the benchmarks.

Configurable TTFT distribution, tokens/s, error and 429 rates, scripted
incidents (fail, slowdown, hang, drop mid-stream, refuse), and a record of what
it received so tests can check where a router sent each request.
"""

from fake_provider.app import Clock, ProviderState, RecordedRequest, build_app
from fake_provider.config import (
    FakeProviderConfig,
    Incident,
    IncidentKind,
    parse_incident_spec,
)
from fake_provider.server import FakeProvider

__all__ = [
    "Clock",
    "FakeProvider",
    "FakeProviderConfig",
    "Incident",
    "IncidentKind",
    "ProviderState",
    "RecordedRequest",
    "build_app",
    "parse_incident_spec",
]
