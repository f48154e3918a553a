import sys

from convlens.cli import main

sys.exit(main())
