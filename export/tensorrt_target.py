"""TensorRT target: ``step.engine`` and ``chunk.engine`` built from the ONNX variant of the same export.

fp32 engines build from ``onnx/fp32``, fp16 engines from ``onnx/fp16`` (strongly typed: the engine keeps the ONNX
graph's precision, state I/O float32). Each engine has one optimization profile over the batch: 1 to the
export's ``max_batch`` (8 by default), optimised for 1.
Full TensorRT is used when importable, else TensorRT for RTX (see :mod:`seqedge.tensorrt_api`); which one
built the engines is recorded in ``Variant.info["api"]``, since only that library can load them.
"""

from __future__ import annotations

from seqedge.artifact import Variant, file_record
from seqedge.tensorrt_api import INSTALL_HINT, build_engine, load_api

from .base import ExportContext

ENTRIES = ("step", "chunk")
MIN_BATCH, OPT_BATCH = 1, 1


class TensorRTTarget:
    name = "tensorrt"
    install_hint = INSTALL_HINT
    schemes = ("none", "fp16")

    def check_available(self) -> None:
        load_api()

    def _onnx_variant(self, ctx: ExportContext) -> Variant:
        tag = ctx.quantization.tag
        for variant in ctx.variants:
            if variant.target == "onnx" and variant.tag == tag:
                return variant
        have = sorted(v.name for v in ctx.variants)
        raise ValueError(f"the tensorrt target builds from the onnx/{tag} variant of the same export, which is not "
                         f"there (this export has {have}); export the onnx target first, e.g. "
                         f"`seqedge export --target onnx` then tensorrt, or `--target all`")

    def export(self, ctx: ExportContext) -> Variant:
        scheme = ctx.quantization.scheme
        if scheme not in self.schemes:
            raise ValueError(f"the tensorrt target supports quantization {list(self.schemes)} (fp32 and fp16 "
                             f"engines), not {scheme!r}; use --quantize none or fp16 for tensorrt")
        api = load_api()
        source = self._onnx_variant(ctx)
        out = ctx.target_dir(self.name)
        files, profiles, info_targets, build_warnings = {}, {}, None, {}
        for entry in ENTRIES:
            if entry not in source.files:
                raise ValueError(f"{source.name} has no {entry!r} file (it has {sorted(source.files)})")
            onnx_path = ctx.root / source.files[entry]["path"]
            build = build_engine(api, onnx_path, min_batch=MIN_BATCH, opt_batch=OPT_BATCH, max_batch=ctx.max_batch,
                                 progress=ctx.progress)
            path = out / f"{entry}.engine"
            path.write_bytes(build.data)
            files[entry] = file_record(ctx.root, path)
            profiles[entry] = build.profile
            info_targets = build.compute_capabilities
            if build.warnings:
                build_warnings[entry] = build.warnings
        info = {
            **api.describe(),
            "built_from": source.name,
            "precision": "fp16 (from the ONNX graph, strongly typed)" if scheme == "fp16"
                         else "fp32 (from the ONNX graph, strongly typed)",
            "batch": {"min": MIN_BATCH, "opt": OPT_BATCH, "max": ctx.max_batch},
            "profiles": profiles,
            "compute_capabilities": info_targets,
            "build_warnings": build_warnings,
        }
        return Variant(self.name, ctx.quantization.to_dict(), files, info)
