"""One cluster-decode step for Nsight Compute (small, batch 1, no graph): ncu --section WarpStateStats ... python
benchmarks/decode_cluster_ncu.py. The warp stall reasons say what the CTAs wait on."""
import sys

import torch

from seqedge.config import SequentialAttentionConfig
from seqedge.kernels.decode_cluster import ClusterDecoder
from seqedge.model import SequentialAttentionModel

torch.manual_seed(0)
model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).to("cuda", torch.bfloat16).eval()
dec = ClusterDecoder(model, capture=False)
dec._params.debug = int(sys.argv[1]) if len(sys.argv) > 1 else 0
tok = torch.tensor([7], device="cuda")
for _ in range(4):
    dec.step(tok)
torch.cuda.synchronize()
