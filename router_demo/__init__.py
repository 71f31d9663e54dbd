"""``router-demo``: the whole system on one machine, with scripted incidents.

Fake providers, the router, a sidecar and a traffic generator run as separate
processes, exactly as they would in production, so the demo exercises the real
wire paths (HTTP, gRPC, outcome streaming) rather than an in-process shortcut.
"""
