"""The live runtime (issue 14): real processes that move every KV byte, with modeled compute.

Built so far: the rate pacer (`pacer.py`), the block store (`store.py`) and the transports
(`transport.py`). The engines, the router and `backend: live` are not built yet.
"""
