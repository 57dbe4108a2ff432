from tongke.cli import main

raise SystemExit(main())
