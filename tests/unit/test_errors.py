import pickle

import pytest

import hive_ray._errors as errors_module
from hive_ray._errors import (
    HiveError,
    OverloadedError,
    TaskFailedError,
    TaskNotFoundError,
    UnknownAgentTypeError,
    UnknownPoolError,
)

ALL_ERRORS = [getattr(errors_module, name) for name in errors_module.__all__]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_survives_a_pickle_round_trip(cls):
    original = cls("something went wrong")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert str(copy) == str(original)
    assert copy.details == original.details
    assert isinstance(copy, HiveError)


def test_keyword_details_survive_too():
    original = OverloadedError(pool="compute", retry_after=2.5)
    copy = pickle.loads(pickle.dumps(original))
    assert copy.retry_after == 2.5
    failed = pickle.loads(pickle.dumps(TaskFailedError("boom", task_id="t1", state="failed",
                                                       error={"type": "ValueError"})))
    assert failed.task_id == "t1" and failed.error == {"type": "ValueError"}


def test_messages_name_the_thing_and_the_fix():
    assert str(UnknownAgentTypeError(agent_type="coder", known=["echo", "compute"])).startswith(
        "no agent type 'coder'; known types: compute, echo. Register a class")
    assert str(UnknownPoolError(pool="coder", known=["echo", "compute"])).startswith(
        "no agent pool 'coder'; known pools: compute, echo.")
    assert "never submitted here" in str(TaskNotFoundError(task_id="abc"))
    assert "retry after 3.0 s" in str(OverloadedError(pool="p", retry_after=3))


def test_the_docstring_tree_lists_every_error():
    for cls in ALL_ERRORS:
        assert cls.__name__ in errors_module.__doc__
