"""The routing rules both the router and the sidecar apply, each written once.

The router ranks with live metrics; the sidecar, when the router is
unreachable, ranks the fallback catalog with none. Both must keep the same
guarantees (a ZDR request never reaches a non-ZDR host) and, with no metrics,
give the same order, so the hard filters, the request cost and the draws live
here and nowhere else (``tests/test_fallback_parity.py`` proves the order).
"""
