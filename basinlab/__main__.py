import sys

from basinlab.launch.cli import main

sys.exit(main())
