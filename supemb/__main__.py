"""`python -m supemb`: the command line (`supemb.cli`)."""

import sys

from supemb.cli import main

sys.exit(main())
