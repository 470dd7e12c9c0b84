import sys

from vcrypto.host.daemon import main

sys.exit(main())
