from fogline.cli import main

raise SystemExit(main())
