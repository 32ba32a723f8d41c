"""Attacks on the judge's end of the channel (solutions/channel.py) by a hostile fake worker.

A strict judge endpoint (as in tools/judge.py) runs here; the other end of a socketpair is a thread
that answers with frames of our choosing. Each test is an attack that worked against the judge
when it was written (issue 10's review); it asserts what the judge must do instead.

The exception names a worker sends back are mapped to the judge's classes. Three of the built-in
ones are not ordinary errors to the code that receives them:

- SystemExit and KeyboardInterrupt are not `Exception`s: tools/judge.py's `except Exception`
  around the settle request after a test cell, and every `except Exception` in the tests' own
  helpers, let them through, and the judge ends without its "done" event (tools/grading.py then
  scores the test cells before that point as passed: see the grader_judge_* submissions in
  tests/hostile_submissions.py);
- StopIteration raised by a call inside `map`, `filter`, `zip` or a `next()` loop ends the
  iteration silently: `all(map(check_one, cases))` is then True with no case checked.

A learner's exception should reach the judge as an ordinary error (a RemoteError subclass of the
same name, say), never as one of these.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from solutions.channel import Endpoint, name_ref, recv_frame, send_frame
from solutions.guard import Forbidden, FunctionContext


def _ask(reply: dict):
    """One call of a strict judge endpoint's, answered by a fake worker with `reply`; returns
    what the call raised (or returned)."""
    ours, theirs = socket.socketpair()
    ep = Endpoint(ours, strict=True, errors={"Forbidden": Forbidden}, records=(FunctionContext,))
    ep.deadline = time.monotonic() + 10

    def peer():
        try:
            recv_frame(theirs, time.monotonic() + 10)
            send_frame(theirs, reply, [])
        except OSError:
            pass

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        return ep.request("call", name_ref(ep, "f"), [1], {})
    except BaseException as err:                 # noqa: B036 - what came out is what is checked
        return err
    finally:
        thread.join(10)
        ours.close()
        theirs.close()


def _error(kind):
    return {"op": "reply", "error": {"t": "exc", "type": kind, "msg": "from the learner's code"}}


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_workers_error_is_an_exception_in_the_judge(kind):
    got = _ask(_error(kind))
    assert isinstance(got, Exception), (f"the worker's {kind} is raised in the judge as a {type(got).__name__}, "
                                        "which `except Exception` does not catch")


def test_a_workers_stop_iteration_does_not_end_a_tests_loop():
    got = _ask(_error("StopIteration"))
    assert not isinstance(got, StopIteration), "the worker's StopIteration is raised in the judge as one"


def test_stop_iteration_from_the_learner_cannot_pass_a_map_of_checks():
    """The consequence, in a test written the natural way: every case checked through map."""
    def check_one(v):
        got = _ask(_error("StopIteration")) if v == 0 else 2 * v
        if isinstance(got, BaseException):
            raise got
        return got == 2 * v

    try:
        passed = all(map(check_one, [0, 1, 2]))
    except Exception:
        passed = False
    assert not passed, "all(map(check, cases)) held with no case checked"
