"""``python -m dllm_decoding.cli`` = ``dllm-decode``."""

import sys

from . import main

sys.exit(main())
