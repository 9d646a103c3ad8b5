from services.tagger.cli import main

raise SystemExit(main())
