"""`python -m cdb.data build ...`: the data-construction CLI (cdb.data.construct)."""

import sys

from cdb.data.construct.__main__ import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["build"]:
        print("usage: python -m cdb.data build --output DIR [options]  (python -m cdb.data build --help)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
