"""`python -m hashcheck_bench`: run the benchmarks and write the results.

benchmarks/run is the normal way in: it starts Redis and PostgreSQL and passes
their addresses here. Run directly, this needs both running already.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hashcheck_bench.report import write_json, write_markdown
from hashcheck_bench.runner import RunConfig, run

__all__ = ["main"]

logger = logging.getLogger("hashcheck_bench")

_ROOT = Path(__file__).resolve().parents[2]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes") from None
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError("sizes must be at least 1000 hashes")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashcheck_bench", description=__doc__)
    parser.add_argument("--sizes", type=_sizes, default=[1_400_000, 20_000_000])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--work", type=Path, default=_ROOT / "benchmarks" / "work")
    parser.add_argument("--out", type=Path, default=_ROOT / "benchmarks")
    parser.add_argument("--redis", required=True, help="HOST:PORT of Redis")
    parser.add_argument("--postgres", required=True, help="libpq conninfo")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the stores in --work"
    )
    return parser


def config_from(args: argparse.Namespace) -> RunConfig:
    config = RunConfig(
        sizes=args.sizes,
        passes=max(1, args.passes),
        work=args.work.resolve(),
        out=args.out.resolve(),
        redis=args.redis,
        postgres=args.postgres,
        quick=args.quick,
        keep_work=args.keep_work,
    )
    if args.quick:
        # Small enough for a couple of minutes, large enough to exercise
        # every path (batches of 100k included).
        config = RunConfig(
            **{
                **config.__dict__,
                "queries": 200_000,
                "rounds": 1,
                "latency_calls": 200,
                "cold_start_passes": 1,
                "min_pass_seconds": 0.2,
            }
        )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    config = config_from(_parser().parse_args(argv))
    results = run(config, _ROOT)
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(results, config.out / "results.json")
    write_markdown(results, config.out / "RESULTS.md")
    logger.info(
        "wrote %s and %s", config.out / "RESULTS.md", config.out / "results.json"
    )
    failed = sum(len(s.skipped) for s in results.sizes)
    if failed:
        logger.warning(
            "%d step(s) failed; see 'Steps that failed' in RESULTS.md", failed
        )
    return 1 if failed else 0
