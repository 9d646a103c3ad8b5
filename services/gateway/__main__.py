from services.gateway.cli import main

raise SystemExit(main())
