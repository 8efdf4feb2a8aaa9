"""``python -m natgrad``: the same as the ``natgrad`` command."""

from natgrad.cli import main

if __name__ == "__main__":
    main()
