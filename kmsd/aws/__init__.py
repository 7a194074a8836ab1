"""The one guarded place where kmsd talks to AWS.

kmsd writes secrets and never reads them: its SM client refuses the read operations before a
request is even signed (see FORBIDDEN_OPERATIONS), so a bug elsewhere cannot turn kmsd into a
reader even where its IAM policy is broader than it should be.
"""
