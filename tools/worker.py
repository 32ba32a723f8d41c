"""The grading worker: runs a learner's notebook cells and answers the judge's requests; started by tools/judge.py in the sandbox.

It is the only process that runs the learner's code, and nothing it says is trusted: the judge
(tools/judge.py) reads its answers as values only (solutions/channel.py). It runs the cells in
an in-process IPython shell (magics, display, matplotlib inline), keeping each cell's outputs, up
to a limit that counts display updates too, for the learner's feedback. Between cells the judge
calls the learner's functions, classes and objects by name or handle; each call runs here, under
the switch-off the test asks for (solutions/guard.py) and a time limit.

    python worker.py --fd N          N: the socket to the judge (the only descriptor it is given)
"""
import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time

# The course's package is installed in editable mode where the course is developed; its finder
# would map `solutions` to the repository, which this process must not see. Only the folder the
# judge prepared (on PYTHONPATH) counts.
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.modules.setdefault("rfc3987_syntax", None)

MAX_CELL_OUTPUT = 1_000_000


class Capture:
    """The outputs of the cell that runs now, as nbformat dicts, with a limit on their size."""

    def __init__(self, limit):
        self.limit, self.outputs, self.size, self.cut = limit, [], 0, False

    def _room(self, content):
        self.size += len(json.dumps(content, default=str))
        if self.size > self.limit:
            if not self.cut:
                self.cut = True
                self.outputs.append({"output_type": "stream", "name": "stderr",
                                     "text": f"\n[output truncated by the grader after {self.limit:,} bytes]\n"})
            return False
        return True

    def stream(self, name, text):
        if not text or not self._room(text):
            return
        last = self.outputs[-1] if self.outputs else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def display(self, data, metadata, transient, update):
        if not self._room([data, metadata]):
            return
        data = {str(k): v for k, v in dict(data).items()}
        display_id = (transient or {}).get("display_id")
        if update:
            for out in self.outputs:
                if out.get("_display_id") == display_id:
                    out["data"], out["metadata"] = data, dict(metadata or {})
            return
        out = {"output_type": "display_data", "data": data, "metadata": dict(metadata or {})}
        if display_id:
            out["_display_id"] = display_id
        self.outputs.append(out)

    def result(self, data, metadata, count):
        if self._room([data, metadata]):
            self.outputs.append({"output_type": "execute_result", "data": {str(k): v for k, v in data.items()},
                                 "metadata": dict(metadata or {}), "execution_count": count})

    def error(self, ename, evalue, traceback):
        if self._room([ename, evalue, traceback]):
            self.outputs.append({"output_type": "error", "ename": ename, "evalue": evalue,
                                 "traceback": [str(line) for line in traceback]})

    def clear(self):                               # clear_output(): this cell's outputs so far go
        self.outputs = []

    def done(self):
        for out in self.outputs:
            out.pop("_display_id", None)
        return self.outputs


CAPTURE = Capture(MAX_CELL_OUTPUT)


class Stream:
    """sys.stdout / sys.stderr while the learner's code runs."""

    def __init__(self, name):
        self.name, self.encoding, self.errors = name, "utf-8", "replace"

    def write(self, text):
        CAPTURE.stream(self.name, str(text))
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("the grader's output streams have no file descriptor")


def make_shell():
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            CAPTURE.display(data, metadata, transient, update)

        def clear_output(self, wait=False):
            CAPTURE.clear()

    class Hook(DisplayHook):
        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            CAPTURE.result(format_dict, md_dict, self.prompt_count)

        def finish_displayhook(self):
            pass

    class Shell(InteractiveShell):
        display_pub_class = Publisher
        displayhook_class = Hook

        def _showtraceback(self, etype, evalue, stb):
            CAPTURE.error(getattr(etype, "__name__", str(etype)), str(evalue), self.InteractiveTB.stb2text(stb)
                          .splitlines() if isinstance(stb, list) else [str(stb)])

        def enable_gui(self, gui=None):           # %matplotlib inline: no event loop to start here
            pass

        def showsyntaxerror(self, filename=None, running_compiled_code=False):
            etype, value, _ = sys.exc_info()
            CAPTURE.error(getattr(etype, "__name__", "SyntaxError"), str(value), [f"{etype.__name__}: {value}"])

    from traitlets.config import Config
    config = Config({"HistoryManager": {"enabled": False, "hist_file": ":memory:"}})
    return Shell.instance(config=config, colors="nocolor", cache_size=0)


@contextlib.contextmanager
def time_limit(seconds):
    """Interrupt the learner's code after `seconds` (a TimeoutError where it runs)."""
    if not seconds:
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"stopped by the grader after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def switch_of(options):
    return tuple(sorted(str(f) for f in options.get("forbid") or ())), options.get("autograd", True) is not False


class Sticky:
    """The switch-off the judge's requests ask for, kept on from one request to the next while they
    ask for the same one and carry no tensors. Putting it on costs about a millisecond, and a test
    of chapter 2 makes thousands of requests inside one call (a chain of 10,000 Value additions):
    in one process that is one switch-off, and so it is here. What it refuses while on is
    reported by the request that ends it (the judge ends it after every test cell)."""

    def __init__(self):
        self.key, self.stack = None, None

    def active(self):
        return self.stack is not None

    def holds(self, options):
        return self.stack is not None and switch_of(options) == self.key

    def hold(self, options):
        key = switch_of(options)
        if key == self.key and self.stack is not None:
            return
        self.release()
        forbid, autograd = key
        if forbid or not autograd:
            stack = contextlib.ExitStack()
            from solutions import guard
            stack.enter_context(guard.switched_off(*forbid, autograd=autograd))
            self.stack, self.key = stack, key

    def release(self):
        if self.stack is not None:
            stack, self.stack, self.key = self.stack, None, None
            stack.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args()
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(args.fd, False)

    import faulthandler
    faulthandler.enable()                          # a crash leaves its trace on stderr (the grader's log, if any)
    import torch
    from solutions import channel, guard

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shell = make_shell()
    ns = shell.user_ns
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Stream("stdout"), Stream("stderr")

    @contextlib.contextmanager
    def guarded(options, switch=True):
        forbid, autograd = switch_of(options)
        with time_limit(options.get("timeout")):
            if switch and (forbid or not autograd):
                with guard.switched_off(*forbid, autograd=autograd):
                    yield
            else:
                yield

    def check_result(value, options):
        """Best effort, after the call: a result whose graph holds a node of a refused family was
        computed with it (a way round the switch-off that the graph still shows)."""
        forbid = tuple(guard._key(str(f)) for f in options.get("forbid") or ())
        if not forbid:
            return
        stack = [t.grad_fn for t in channel._tensors_in(value) if t.grad_fn is not None]
        seen = set()
        while stack and len(seen) < 100_000:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            name = type(node).__name__
            if guard._in_family(name, forbid) and not isinstance(node, torch.autograd.function.BackwardCFunction):
                raise guard.Forbidden(f"{name} in your result's graph: the result was computed with "
                                      "an operation this exercise asks you to build yourself")
            stack.extend(fn for fn, _ in getattr(node, "next_functions", ()))

    endpoint = channel.Endpoint(sock, namespace=ns, errors={"Forbidden": guard.Forbidden},
                                records=(guard.FunctionContext,), guard=guarded)
    endpoint.check_result = check_result
    endpoint.sticky = Sticky()
    substitutions = []

    def run_cell(_, source, timeout=None, limit=MAX_CELL_OUTPUT):
        global CAPTURE
        CAPTURE = Capture(int(limit))
        started = time.monotonic()
        timed_out = False
        try:
            with time_limit(timeout):
                shell.run_cell(str(source), store_history=True)
        except TimeoutError:                        # the alarm went off outside the cell's own code
            timed_out = True
        except BaseException as err:               # noqa: B036 - the cell's end, whatever it was
            CAPTURE.error(type(err).__name__, str(err), [f"{type(err).__name__}: {err}"])
        seconds = time.monotonic() - started
        outputs = CAPTURE.done()
        timed_out = timed_out or any(o.get("ename") == "TimeoutError" and "stopped by the grader" in o.get("evalue", "")
                                     for o in outputs)
        return {"outputs": outputs, "timed_out": timed_out, "seconds": round(seconds, 3)}

    def substitute(_, name, value):
        substitutions.append((name, ns.get(name, substitute)))
        ns[name] = value
        return len(substitutions)

    def restore(_, depth):
        while len(substitutions) >= int(depth):
            name, value = substitutions.pop()
            if value is substitute:
                ns.pop(name, None)
            else:
                ns[name] = value

    endpoint.verbs.update(run_cell=run_cell, substitute=substitute, restore=restore, settle=lambda _: None,
                          hello=lambda _: {"pid": os.getpid(), "python": sys.version.split()[0]})
    endpoint.serve_forever(log=real_err)
    sys.stdout, sys.stderr = real_out, real_err
    os._exit(0)


if __name__ == "__main__":
    main()
