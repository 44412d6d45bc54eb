"""Runs the fused decoder's Triton kernels in Triton's CPU interpreter against ``model.step`` (float32) for the
imported families' mixer parts: Mamba2, Gated DeltaNet, KDA and GLA (tests/test_mixer_parts.py describes them).

Started in a subprocess by tests/test_decode_fused_interpret.py, as decode_fused_interpret_check.py (whose
``run_model_case`` it runs: random weights and state, NaN-poisoned scratch, logits and every state tensor per step).
The configs (_kernel_cases.FAMILIES): odd sizes, grouped key heads, norm groups wider and narrower than a head.
Batch 1 (GEMVs) and 17 (the batched kernels, two tiles) for Mamba2 and Gated DeltaNet. Prints ``name rel_err`` per check and exits non-zero on the first one over TOL.
"""

from __future__ import annotations

# first: it imports kernels_interpret_check, which switches the interpreter on before triton compiles anything
from decode_fused_interpret_check import run_model_case

from _kernel_cases import FAMILIES, family_decoder_config  # noqa: E402

STEPS = 3
BATCHED = ("mamba2 groups=32", "gated-deltanet")


def main() -> None:
    for name in FAMILIES:
        cfg = family_decoder_config(name)
        run_model_case(cfg, name, 1, 0, programs=4, steps=STEPS)
        if name in BATCHED:
            run_model_case(cfg, name, 17, 0, programs=4, steps=STEPS)
    print("ALL OK")


if __name__ == "__main__":
    main()
