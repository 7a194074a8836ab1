"""The one guarded place where kmsd talks to AWS (clients are built in ``clients``)."""
