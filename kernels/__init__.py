"""GPU custom ops (Triton) for the chunked scan and the fused decode step, with CPU fallbacks."""
