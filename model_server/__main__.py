"""python -m model_server --flag=value ... (tensorflow_model_server's flags)."""

import sys

from model_server.cli import main

sys.exit(main())
