"""``python -m prepare.synth``: see ``prepare.synth.make``."""
from cytocore import io
from prepare.synth.make import main

if __name__ == "__main__":
    raise SystemExit(io.cli(main))
