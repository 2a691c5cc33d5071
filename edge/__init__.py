"""The node side: everything an edge node runs, without the stream engine.

The worker (`edge.worker`) serves ONNX models and hot-swaps them on command
(`edge.serving`), listens for commands (`edge.listener`), runs workflow runs
(`edge.runtime` over `edge.artifacts`; the reference `edge.inspection` workflow
and `edge.wfcommons` replays) with shadow pre-execution (`edge.shadow`), and
reads its sensors (`edge.sensors`: NVML, or the thermal model). The node
simulation (`edge.thermal`, `edge.fleet`) lives here too, because it stands in
for the node itself where there is no GPU.

Nothing here imports Bytewax: a node reaches Kafka with confluent-kafka alone
(`schemas.kafka`), so it runs on a device that has no stream engine.
"""
