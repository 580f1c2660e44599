"""``python -m fogline.digits ROOT``, the documented command that builds the digits cascade; the code
lives in :mod:`fogline.local.digits`."""

from fogline.local.digits import main

if __name__ == "__main__":
    raise SystemExit(main())
