"""The agents shipped with hive-ray, installed as ``hive_ray.actors``.

Each registers through the ``hive_ray.agents`` entry point in pyproject.toml,
exactly as a third-party package would.
"""
