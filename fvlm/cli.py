"""The argument parser every CLI of the project uses: bad flags are one line on stderr and exit code 2.

    from fvlm.cli import OneLineParser
    parser = OneLineParser(prog="fit_laws.py", error_name="fit_laws", description=__doc__)

argparse prints the whole usage block and exits 2 on a bad flag; the project's contract for bad input is one
line naming the fix, then exit 2, with nothing written (README "Bad input").
"""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line: '<error_name>: error: <message> (see --help)'."""

    def __init__(self, *args, error_name: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.error_name = error_name or self.prog

    def error(self, message: str) -> None:
        print(f"{self.error_name}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
