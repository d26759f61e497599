"""The local runtime: the embedded Redis (`embedded`, `redis_binary`), a local Redis
Cluster for tests (`cluster`), and the local stack — its launcher (`stack`), processes
(`stack_proc`), members file (`stack_file`), state dir (`paths`) and faults for chaos
runs (`faults`)."""
