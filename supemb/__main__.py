import sys

from supemb.cli import main

sys.exit(main())
