from damt.cli import main

raise SystemExit(main())
