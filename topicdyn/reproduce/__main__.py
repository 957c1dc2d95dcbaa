import sys

from topicdyn.reproduce.cli import main

sys.exit(main())
