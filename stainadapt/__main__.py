"""``python -m stainadapt`` (and ``torchrun -m stainadapt``) runs the CLI."""

from stainadapt.cli.app import main

if __name__ == "__main__":
    main()
