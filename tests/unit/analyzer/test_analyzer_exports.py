"""The analyzer package's exported names are sorted, unique and exactly its public names."""

import hive_ray._analyzer as analyzer


def test_all_is_sorted_and_unique():
    assert analyzer.__all__ == sorted(set(analyzer.__all__))


def test_all_lists_every_public_name():
    public = {
        name
        for name in vars(analyzer)
        if not name.startswith("_") and not isinstance(getattr(analyzer, name), type(analyzer))
    }
    assert public == set(analyzer.__all__)
