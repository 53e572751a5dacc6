"""`python -m tritpack_gguf` = the `tritpack-gguf` command."""

import sys

from .cli import main

sys.exit(main())
