from services.backup.cli import main

raise SystemExit(main())
