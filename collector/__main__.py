"""`python -m collector serve …` (the same as the `rumline` command)."""

from collector.cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn imports this as __mp_main__
    raise SystemExit(main())
