"""``python -m loopdesk`` (and ``accelerate launch -m loopdesk train``) run the ``loopdesk`` command."""

from loopdesk.cli import main

main()
