"""`zsqbench bench`: time one training iteration against its bare network passes (zsqbench.perf.bench)."""

from __future__ import annotations

import argparse
import json

from zsqbench.cli.compute_flags import add_compute_flags, compute_settings
from zsqbench.errors import UserError

DESCRIPTION = """\
Time one training iteration after warm-up (step_s) against the bare FP network passes of the same
iteration (bare_s), interleaved in one process, medians over --iters repetitions; plus one
evaluation pass of the quantized student and of the FP teacher. See benchmarks/README.md for how to
read the numbers.
"""


def _int_at_least(minimum: int, wording: str):
    """An argparse type for integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got '{text}'")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time a training iteration and an evaluation pass (random teacher, no data needed)",
        description=DESCRIPTION)
    p.add_argument("--generator", default="adadfq", help="generator plugin (default adadfq)")
    p.add_argument("--loss", default="akt", help="loss plugin (default akt)")
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (default 4)")
    p.add_argument("--batch-size", type=_positive, default=200, help="training batch (default 200)")
    p.add_argument("--model", default="resnet20_cifar10", help="teacher architecture (default resnet20_cifar10)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=_positive, help="torch intra-op threads (default: PyTorch's choice)")
    p.add_argument("--iters", type=_positive, default=10, help="timed iterations of each kind (default 10)")
    p.add_argument("--warmup-iters", type=_non_negative, default=3,
                   help="untimed iterations of each kind first (default 3)")
    p.add_argument("--eval-images", type=_positive, default=10000,
                   help="random test-sized images per evaluation pass (default 10000, batch 200)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="generator/loss/quantizer option, e.g. -o adadfq.share_student_forward=false, "
                        "-o uniform.ste=reference (the straightforward STE, for comparison; repeatable)")
    add_compute_flags(p)
    p.add_argument("--explain", action="store_true",
                   help="instead of timing: how torch.compile splits the training iteration (--compile's graphs, "
                        "each graph break with its reason and place); traces one step, compiles no kernels")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    from zsqbench.bits import MAX_BITS, MIN_BITS
    from zsqbench.cli.run_cmd import _parse_options  # the same PLUGIN.KEY=VALUE syntax as `run`
    from zsqbench.perf.bench import BenchConfig, run_bench  # keeps `zsqbench --help` light

    if not MIN_BITS <= args.bits <= MAX_BITS:
        raise UserError(f"--bits {args.bits}: bits must be between {MIN_BITS} and {MAX_BITS}")
    config = BenchConfig(
        generator=args.generator, loss=args.loss, bits=args.bits, batch_size=args.batch_size, device=args.device,
        threads=args.threads, iters=args.iters, warmup_iters=args.warmup_iters, eval_images=args.eval_images,
        model=args.model, compute=compute_settings(args), options=_parse_options(args.option),
    )
    if args.explain:
        return _explain(config, args.json)
    result = run_bench(config)
    if args.json:
        print(json.dumps(result))
        return 0
    from zsqbench.bits import bits_label
    from zsqbench.cli.console import out

    r = result
    out.print(f"{r['generator']}+{r['loss']} {bits_label(r['bits'], r['bits'])}, batch {r['batch_size']}, {r['device_name']}, "
              f"torch {r['torch']}, precision {r['precision']}"
              + (", channels-last" if r["channels_last"] else "") + (", compiled" if r["compile"] else ""),
              highlight=False, soft_wrap=True)
    out.print(f"  training step  {r['step_s'] * 1e3:10.1f} ms  (median of {r['iters']})", highlight=False)
    out.print(f"  bare passes    {r['bare_s'] * 1e3:10.1f} ms  -> overhead x{r['overhead']:.2f}", highlight=False)
    if r["bare_method_s"] != r["bare_s"]:
        out.print(f"  method's passes{r['bare_method_s'] * 1e3:10.1f} ms  -> overhead x{r['overhead_method']:.2f} "
                  "(with the student passes the method adds)", highlight=False)
    kernels = f", {r['kernels_per_step']} kernel launches" if r["kernels_per_step"] is not None else ""
    share = r["outside_conv_share"]
    out.print(f"  operator calls {r['ops_per_step']:10d}{kernels}; "
              + (f"{share:.0%} of the step's time outside convolutions" if share is not None else ""),
              highlight=False)
    if r["compile"]:
        out.print("                   (ATen calls: a compiled graph's own kernels are not counted)",
                  highlight=False)
    out.print(f"  eval student   {r['eval_s']:10.2f} s", highlight=False)
    out.print(f"  eval teacher   {r['fp_eval_s']:10.2f} s   -> ratio x{r['eval_ratio']:.2f}", highlight=False)
    out.print(f"  peak memory    {r['peak_mem_mb']:10.0f} MiB", highlight=False)
    return 0


def _explain(config, as_json: bool) -> int:
    from zsqbench.cli.console import out
    from zsqbench.perf.bench import explain_bench

    report = explain_bench(config)
    if as_json:
        print(json.dumps(report))
        return 0
    out.print(f"{report['generator']}+{report['loss']}, batch {report['batch_size']}: the training iteration "
              f"compiles to {report['graphs']} graphs with {report['graph_breaks']} graph breaks "
              f"({report['ops']} traced operations)", highlight=False, soft_wrap=True)
    for b in report["breaks"]:
        where = f" ({b['where']})" if b["where"] else ""
        out.print(f"  {b['count']:3d} x {b['reason']}{where}", highlight=False, soft_wrap=True)
    return 0
