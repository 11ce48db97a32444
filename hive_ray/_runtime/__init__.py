"""The Ray side of hive-ray: agent host actors, placement and the orchestrator actor.

Everything here imports Ray, so nothing here is imported by ``import hive_ray``.
"""
