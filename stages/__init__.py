"""The pipeline's stages, one module per DVC stage, run as `python -m stages.<name>`."""

import os
import sys

# Every stage is a fresh Python process importing torch and transformers, which takes about 13 s
# longer from source than from cached bytecode (measured here: 19.3 s against 5.8 s). Where
# PYTHONDONTWRITEBYTECODE is set, as in many containers, nothing would ever be cached; inside a
# virtual environment the bytecode then goes to the environment's own folder, so source trees
# stay free of __pycache__ as that setting intends.
if sys.dont_write_bytecode and sys.prefix != sys.base_prefix:
    sys.pycache_prefix = os.path.join(sys.prefix, "pycache")
    sys.dont_write_bytecode = False
