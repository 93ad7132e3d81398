"""``python -m meshrun``: the same command as the ``meshrun`` console script."""

from meshrun.cli import main

if __name__ == "__main__":
    main()
