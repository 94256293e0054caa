from llmgen.cli import main

raise SystemExit(main())
