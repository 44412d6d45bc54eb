"""Runs the fused decoder's Triton kernels in Triton's CPU interpreter against ``model.step`` (float32).

Started in a subprocess by tests/test_decode_fused_interpret.py (the interpreter must be on before triton compiles
anything). A tiny float32 model with every parameter randomised (norm weights, skip, biases: a forgotten term
fails), a random non-zero initial state, both update rules x every entry of FUSED_CONFIGS at batch 1 (and each
rule and each config once at batch 3; each rule at batch 17, in the batched kernels), several consecutive tokens;
each step compares the logits and every state tensor. Scratch buffers and logits are poisoned with NaN before
each step. Prints ``name rel_err`` (relative L2 error) per check and exits non-zero on the first one over TOL.
"""

from __future__ import annotations

import sys

# first: importing it sets TRITON_INTERPRET=1 and patches the interpreter, before triton compiles anything
from kernels_interpret_check import rel

import torch  # noqa: E402

from _kernel_cases import odd_decoder_config, randomize  # noqa: E402
from seqedge.kernels.decode_fused import FUSED_CONFIGS, FusedDecoder, _head_split, block_n  # noqa: E402
from seqedge.model import SequentialAttentionModel  # noqa: E402

TOL = 1e-4      # float32 model, float32 kernels: only the summation order differs
STEPS = 5
CASES = [       # rule, conv_kernel, tied head: the delta case also covers a non-power-of-two conv tail and a head
    ("gated", 4, True),
    ("delta", 3, False),
]


def check(name: str, err: float) -> None:
    print(f"{name} {err:.2e}", flush=True)
    if not err < TOL:
        sys.exit(f"FAILED {name}: relative error {err:.2e} >= {TOL:.0e}")


def run_case(rule: str, kernel: int, tied: bool, B: int, cfg_id: int, programs: int) -> None:
    cfg = odd_decoder_config(rule, conv_kernel=kernel, tied=tied)
    run_model_case(cfg, f"{rule} K={kernel} tied={tied}", B, cfg_id, programs)


def run_model_case(cfg, label: str, B: int, cfg_id: int, programs: int, steps: int = STEPS) -> None:
    """The decoder against ``model.step`` for ``steps`` tokens from a random state: logits and every state tensor
    each step, scratch buffers poisoned with NaN before each."""
    torch.manual_seed(cfg_id)
    model = SequentialAttentionModel(cfg).eval()
    randomize(model, seed=7 + cfg_id)
    gen = torch.Generator().manual_seed(B)
    state = model.init_state(B)
    state = state.with_tensors([torch.randn(t.shape, generator=gen) * 0.5 for t in state.tensors])
    dec = FusedDecoder(model, batch_size=B, config=FUSED_CONFIGS[cfg_id], capture=False, programs=programs)
    assert dec.graph is None
    assert dec._gemm == (B >= FUSED_CONFIGS[cfg_id].batch_tile), "the batched kernels run from batch_tile rows on"
    dec.reset(state)
    addrs = [t.data_ptr() for t in dec.states]
    tokens = torch.randint(0, cfg.vocab_size, (steps, B), generator=gen)
    name = f"{label} B={B} cfg={FUSED_CONFIGS[cfg_id]} programs={programs}"
    with torch.no_grad():
        for t in range(steps):
            for buf in dec.scratch:
                buf.fill_(float("nan"))
            ref, state = model.step(tokens[t], state)
            got = dec.step(tokens[t])
            check(f"{name} step {t} logits", rel(got, ref))
            for i, (a, b) in enumerate(zip(dec.states, state.tensors)):
                check(f"{name} step {t} state.{i}", rel(a, b))
    assert [t.data_ptr() for t in dec.states] == addrs, "state buffers must be updated in place"
    got_state = dec.state()
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(got_state.tensors, dec.states)), "state() must copy"


def main() -> None:
    assert block_n(2068, 512, 132) == 8 and block_n(64, 64, 132) == 2           # small's step 1; tiny rows
    assert block_n(391, 512, 4) == 8 and block_n(391, 64, 16) == 16             # the tile cap; the program target
    assert _head_split(1408) == (11, 128) and _head_split(176) == (11, 16) and _head_split(512) == (4, 128)
    for cfg_id in range(len(FUSED_CONFIGS)):          # few, wide programs (programs=4): fast in the interpreter
        for case_id, (rule, kernel, tied) in enumerate(CASES):
            run_case(rule, kernel, tied, 1, cfg_id, programs=4)
            if case_id == cfg_id:                     # batch 3 (3x the programs): each rule once, each config once
                run_case(rule, kernel, tied, 3, cfg_id, programs=4)
    run_case("delta", 3, False, 1, 0, programs=16)                     # narrower GEMV tiles, more programs
    assert FUSED_CONFIGS[0].batch_tile == 16 < FUSED_CONFIGS[1].batch_tile
    for rule, kernel, tied in CASES:                  # batched kernels: 2 tiles of 16 rows, the second 1 row used
        run_case(rule, kernel, tied, 17, 0, programs=4)
    print("ALL OK")


if __name__ == "__main__":
    main()
