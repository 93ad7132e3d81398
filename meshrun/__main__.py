"""``python -m meshrun``: the same command as the ``meshrun`` console script."""

from meshrun.cli.app import main

if __name__ == "__main__":
    main()
