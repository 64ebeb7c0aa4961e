"""What only the queue server runs: the broker and its parts, the journal, serving.

No client process imports anything from here.
"""
