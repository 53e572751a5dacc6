"""`python -m tritpack_gguf.cli` = the `tritpack-gguf` command."""

import sys

from . import main

sys.exit(main())
