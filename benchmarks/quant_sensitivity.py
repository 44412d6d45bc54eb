"""Whether a quantized variant's quality gap is the format's or the model's: logits under weight rounding, under
unstructured noise of the same size, and from the exported step.

    python benchmarks/quant_sensitivity.py [--models bundled,mamba2-130m] [--artifact DIR] [--tokens 64]

For each model, over one seeded token stream, against the float32 model's logits:
- ``rounded``: the weights of every linear layer and of the output head rounded as the exports round them
  (int8: 8 bits in symmetric blocks of 128 input columns, as ``onnx`` int8; int4: blocks of 32 input columns, asymmetric
  round-to-nearest, as ``int4-all`` before its block search), activations kept float32;
- ``noise``: each of those matrices plus Gaussian noise of the same RMS as its rounding error: a perturbation of
  the same size with no structure, so what the model does with any error of that size;
- ``exported``: with ``--artifact``, the artifact's onnx-ort int8/int4 steps (the runtime's activations included).
A model whose ``noise`` row already loses top-1 is too sensitive for top-1 agreement to judge a quantizer: a
random model amplifies weight error through its layers, which a trained model does not. ``mamba2-130m`` is the
random Mamba2 of mamba2-130m's config that ``llama_cpp.py`` times (built in ``--workdir`` if absent); ``bundled`` is
the trained 2M-parameter default model.

Writes benchmarks/results/quant_sensitivity.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from hf_models import make_mamba2_130m

from seqedge.export import int8_blocks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GROUP = 32


def round_int8(w: torch.Tensor) -> torch.Tensor:
    """The onnx int8 export's weights (``int8_blocks.rounded``: symmetric blocks of 128 input columns); ``w`` is
    a Linear's ``[out, in]``."""
    return torch.from_numpy(int8_blocks.rounded(w.detach().float().T.numpy()).T.copy()).to(w.dtype)


def round_int4(w: torch.Tensor) -> torch.Tensor:
    """4-bit asymmetric round-to-nearest in blocks of GROUP input columns (zero points in 0..15)."""
    out, cols = w.shape
    blocks = w.reshape(out, cols // GROUP, GROUP)
    lo, hi = blocks.amin(-1, keepdim=True).clamp_max(0), blocks.amax(-1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    zero = (-lo / scale).round().clamp(0, 15)
    q = (blocks / scale + zero).round().clamp(0, 15)
    return ((q - zero) * scale).reshape(out, cols)


ROUNDING = {"int8": round_int8, "int4": round_int4}


def untied(model: nn.Module) -> nn.Module:
    """A copy whose output head is its own Linear (the exports quantize the head, not the embedding table)."""
    model = copy.deepcopy(model).float().eval()
    if model.head is None:
        model.head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    return model


def perturbed(model: nn.Module, scheme: str, kind: str, seed: int) -> nn.Module:
    """``model`` with every linear's weight rounded (``kind="rounded"``) or given noise of its rounding error's
    RMS (``kind="noise"``)."""
    model = untied(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            # int4 blocks need whole groups: narrower inputs stay float, as the exports leave them
            if isinstance(module, nn.Linear) and (scheme == "int8" or module.in_features % GROUP == 0):
                w = module.weight
                rounded = ROUNDING[scheme](w)
                if kind == "rounded":
                    w.copy_(rounded)
                else:
                    rms = (rounded - w).pow(2).mean().sqrt()
                    w.add_(torch.randn(w.shape, generator=gen) * rms)
    return model


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    return {"rel_rms": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
            "top1": float((got.argmax(-1) == want.argmax(-1)).mean())}


def load_model(name: str, workdir: Path, seed: int) -> nn.Module:
    if name == "bundled":
        from seqedge.defaults import load_default

        return load_default().float().eval()
    from seqedge.families import import_hf

    folder = workdir / "mamba2-130m-random"
    make_mamba2_130m(folder, seed)
    return import_hf(folder).eval()


def exported_rows(artifact: Path, tokens: torch.Tensor, want: np.ndarray) -> list[dict]:
    import seqedge
    from seqedge.artifact import read_manifest

    rows = []
    for variant in read_manifest(artifact).variants:
        if variant.target != "onnx-ort" or variant.tag not in ROUNDING:
            continue
        sess = seqedge.load(artifact, runtime="onnxruntime-fused", quantization=variant.tag)
        state, logits = sess.init_state(1), []
        for token in tokens[0].tolist():
            out, state = sess.step(np.asarray([token]), state)
            logits.append(np.asarray(out)[0])
        rows.append({"scheme": variant.tag, "kind": f"exported ({variant.quantization['recipe']})",
                     **compare(np.stack(logits), want)})
    return rows


def token_stream(name: str, model: nn.Module, args) -> torch.Tensor:
    """The bundled model reads Python source (this repository's model code, not its training data); the random
    model reads random ids (it has no language to follow)."""
    if name == "bundled":
        from seqedge.tokenizer import ByteTokenizer

        text = (ROOT / "seqedge" / "model.py").read_text()
        return torch.tensor([ByteTokenizer().encode(text)[:args.tokens]])
    return torch.randint(0, min(model.config.vocab_size, 50000), (1, args.tokens),
                         generator=torch.Generator().manual_seed(args.seed))


def measure(name: str, model: nn.Module, args) -> dict:
    tokens = token_stream(name, model, args)
    with torch.no_grad():
        want = model(tokens)[0][0].float().numpy()
    top2 = np.sort(want, -1)[:, -2:]
    rows = []
    for scheme in ROUNDING:
        for kind in ("rounded", "noise"):
            with torch.no_grad():
                got = perturbed(model, scheme, kind, args.seed)(tokens)[0][0].float().numpy()
            rows.append({"scheme": scheme, "kind": kind, **compare(got, want)})
            print(name, rows[-1], flush=True)
    if args.artifact and name == "mamba2-130m":
        rows += exported_rows(args.artifact, tokens, want)
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "logit_std": float(want.std()), "median_top2_margin": float(np.median(top2[:, 1] - top2[:, 0])),
            "rows": rows}


def render(results: list[dict], meta: dict) -> str:
    from seqedge.evaluate.run_info import metadata_markdown

    lines = ["# Quantization sensitivity: rounding, noise of the same size, and the exported step", "",
             *metadata_markdown(meta), f"- {meta['tokens']} tokens, seed {meta['seed']}", ""]
    for res in results:
        lines += [f"## {res['model']} ({res['parameters'] / 1e6:.1f}M parameters; float32 logits: std "
                  f"{res['logit_std']:.2f}, median top-2 margin {res['median_top2_margin']:.2f})", "",
                  "| scheme | weights | relative RMS of logits | top-1 agreement |", "|---|---|---:|---:|"]
        lines += [f"| {r['scheme']} | {r['kind']} | {r['rel_rms']:.4f} | {100 * r['top1']:.1f}% |" for r in res["rows"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bundled,mamba2-130m", help="comma-separated: bundled, mamba2-130m")
    p.add_argument("--artifact", type=Path, help="an artifact of the mamba2-130m model with onnx-ort int8/int4")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "seqedge" / "llama-cpp-bench")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    results = [measure(name, load_model(name, args.workdir, args.seed), args) for name in args.models.split(",")]
    from seqedge.evaluate.run_info import run_metadata

    meta = run_metadata(tokens=args.tokens, seed=args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant_sensitivity.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (RESULTS / "quant_sensitivity.md").write_text(render(results, meta))
    print(render(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
