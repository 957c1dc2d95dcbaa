import sys

from topicdyn.cli import main

sys.exit(main())
