"""python -m model_server --flag=value ... (tensorflow_model_server's flags)."""

import sys

from model_server.server import main

sys.exit(main())
