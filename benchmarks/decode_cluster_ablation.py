"""Where the cluster decoder's time goes (small, batch 1): the same launch with parts switched off through
DecodeParams.debug (1: no row math or epilogues; 2: __syncthreads instead of the cluster barrier; 4: no
distributed-shared-memory broadcast). Results are wrong except at 0; only the times mean something. Never combine
2 without 4: a CTA could exit while another still writes into its shared memory.

    python benchmarks/decode_cluster_ablation.py
"""
import torch, sys
sys.path.insert(0, "benchmarks")
from kernels import _time_decoder
from seqedge.config import SequentialAttentionConfig
from seqedge.model import SequentialAttentionModel
from seqedge.kernels.decode_cluster import ClusterDecoder
torch.manual_seed(0)
model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).to("cuda", torch.bfloat16).eval()
w = sum(p.numel() * p.element_size() for p in model.parameters())
for dbg in [int(a) for a in (sys.argv[1:] or ["0", "1", "4", "5", "7"])]:
    dec = ClusterDecoder(model, capture=False)
    dec._params.debug = dbg
    dec._capture(2)
    r = _time_decoder(dec, model, 1, w, 4300.0, n=300)
    print("debug", dbg, "us", round(r["us_per_token"], 1), "err", r["rel_err_vs_model_step"], flush=True)
