"""Proving an artifact: parity against the float64 reference, ``validate``, latency, ``bench``, their reports.

This package sits above :mod:`seqedge.export` and :mod:`seqedge.runtimes`; neither of them imports it.
"""
