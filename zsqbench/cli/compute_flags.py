"""The compute flags shared by `zsqbench run` and `zsqbench bench` (see zsqbench.perf.compute)."""

from __future__ import annotations

import argparse

from zsqbench.perf.compute import PRECISIONS, ComputeSettings


def add_compute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16: convolutions in bfloat16, quantizers/BN/losses in float32 "
                        "(opt-in; its accuracy effect must be measured)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC (--channels-last) or NCHW (--no-channels-last) memory format for all networks; "
                        "default: channels-last on CPU (measured faster), NCHW on CUDA. The two differ at "
                        "the rounding level (see benchmarks/README.md)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each network in place (off by default; not bit-identical to eager)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="--tf32 allows TF32 in CUDA matmuls and convs, --no-tf32 forbids it (strict FP32); "
                        "default: PyTorch's defaults")


def compute_settings(args: argparse.Namespace) -> ComputeSettings:
    return ComputeSettings(precision=args.precision, channels_last=args.channels_last,
                           compile=args.compile, tf32=args.tf32)
