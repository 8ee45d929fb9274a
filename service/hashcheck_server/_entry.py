"""The `hashcheck-server` script; says what to install when the extra is missing."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from hashcheck_server.cli import main as cli_main
    except ModuleNotFoundError as missing:
        print(
            f"hashcheck-server needs the server dependencies ({missing.name} is "
            "missing). Install them with: pip install 'hashcheck[server]'",
            file=sys.stderr,
        )
        return 2
    return cli_main()
