"""Local runtime pieces: the embedded Redis and (later) the local stack launcher."""
