"""One server worker sharing its port: the stand-in for `serve --workers N`.

`python -m hashcheck_bench.reuseport_worker --data DIR --listen HOST:PORT`
runs the real server (`start_server`) with `reuse_port` set, so that several
of these processes share one port and one mapped table, as the workers of
`serve --workers N` do. The benchmark uses it only when the CLI does not
offer `--workers` yet, and labels the figures as emulated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hashcheck_server.server import ServerConfig, serve_until_signalled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    serve_until_signalled(
        ServerConfig(data=args.data, listen=args.listen, reuse_port=True)
    )


if __name__ == "__main__":
    main()
